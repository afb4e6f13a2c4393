//! SHA-256 digests as a value type: parsed from and printed as lowercase hex.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// Each byte's value as a hex digit; 0xff for anything else.
const HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        table[b"0123456789ABCDEF"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, String> {
        if s.len() != 64 {
            return Err(format!(
                "expected 64 hex digits, found {} characters",
                s.len()
            ));
        }
        // A table rather than `hex`'s branches: a catalog's manifest has
        // hundreds of thousands of digests to parse.
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
            if (hi | lo) > 0xf {
                // The error, with the offending character, from `hex`.
                hex::decode_to_slice(s, &mut [0u8; 32])
                    .map_err(|e| format!("not hexadecimal: {e}"))?;
            }
            *byte = hi << 4 | lo;
        }
        Ok(Digest(out))
    }

    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// Hashes everything `reader` yields.
    pub fn of_reader(mut reader: impl Read) -> io::Result<Self> {
        let mut hasher = Sha256::new();
        // 1 MiB: large enough to amortize syscalls, small enough to stay in L2.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(Digest(hasher.finalize().into())),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Hashes a whole file with positional reads: the descriptor's offset
    /// (shared with its clones) is neither used nor moved.
    pub fn of_file(file: &std::fs::File) -> io::Result<Self> {
        struct At<'a>(&'a std::fs::File, u64);
        impl Read for At<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = std::os::unix::fs::FileExt::read_at(self.0, buf, self.1)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        Self::of_reader(At(file, 0))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_value() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::of(b"").to_hex(), empty);
        assert_eq!(
            Digest::from_hex(&empty.to_uppercase()).unwrap(),
            Digest::of(b"")
        );
        assert_eq!(Digest::of_reader(&b""[..]).unwrap(), Digest::of(b""));
        assert!(
            Digest::from_hex("abc")
                .unwrap_err()
                .contains("64 hex digits")
        );
        assert!(
            Digest::from_hex(&"g".repeat(64))
                .unwrap_err()
                .contains("not hexadecimal")
        );
    }
}
