//! The hot loops under a read, without I/O: hashing a chunk, the chunk map's
//! bits, and the readahead state machine. `cargo bench`; compare runs on one
//! machine, not absolute times.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modelfs::cache::chunk_map::{ChunkMap, Identity};
use modelfs::fetch::readahead::Readahead;
use modelfs::hash::Digest;

fn hashing(c: &mut Criterion) {
    let chunk = vec![7u8; 8 << 20];
    let mut group = c.benchmark_group("sha256");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("8 MiB chunk", |b| b.iter(|| Digest::of(black_box(&chunk))));
    group.finish();
}

fn chunk_map(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // 100 GiB in 1 MiB chunks: 102,400 bits.
    let id = Identity {
        size: 100 << 30,
        chunk_size: 1 << 20,
        chunk_list: Digest([1; 32]),
        dev: 1,
        ino: 1,
    };
    let (path, tmp) = (dir.path().join("x.map"), dir.path().join("x.tmp"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .unwrap();
    let map = ChunkMap::create(&path, (file, &tmp), &id).unwrap();
    (0..102_400).step_by(2).for_each(|i| {
        map.set(i);
    });
    c.bench_function("chunk map: is_set", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 102_400;
            black_box(map.is_set(i))
        })
    });
    c.bench_function("chunk map: count 102,400 bits", |b| {
        b.iter(|| black_box(map.count()))
    });
}

fn readahead(c: &mut Criterion) {
    c.bench_function("readahead: 1,024 sequential 128 KiB reads", |b| {
        b.iter(|| {
            let mut ra = Readahead::new(8 << 20);
            for i in 0..1024u64 {
                black_box(ra.on_read(i << 17, 1 << 17, 1 << 30).fetch);
            }
        })
    });
}

criterion_group!(benches, hashing, chunk_map, readahead);
criterion_main!(benches);
