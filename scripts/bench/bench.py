"""The bench's helpers in Python (scripts/bench.sh): timing inside one process, data
generation, the kill reader, the loaders. Usage: python3 bench.py FUNCTION ARGS..."""
import errno, hashlib, json, os, socket, sys, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])

def pread(path, off, n):
    """ms of one pread, the open excluded"""
    fd = os.open(path, os.O_RDONLY)
    t = time.perf_counter()
    b = os.pread(fd, int(n), int(off))
    dt = time.perf_counter() - t
    os.close(fd)
    if len(b) != int(n):
        sys.exit(f"short read: {len(b)} of {n}")
    print(f"{dt * 1e3:.2f}")

def open_pread(path, off, n):
    """ms of the open and of one pread after it, printed as: OPEN PREAD"""
    t = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    t1 = time.perf_counter()
    b = os.pread(fd, int(n), int(off))
    t2 = time.perf_counter()
    os.close(fd)
    if len(b) != int(n):
        sys.exit(f"short read: {len(b)} of {n}")
    print(f"{(t1 - t) * 1e3:.2f} {(t2 - t1) * 1e3:.2f}")

def ec_keypair(private, public):
    """a P-256 key pair as PEM files, as `openssl ecparam -genkey` makes (needs cryptography)"""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives import serialization as s
    k = ec.generate_private_key(ec.SECP256R1())
    open(private, "wb").write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()))
    open(public, "wb").write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))

def sign_shards(model, private, shard):
    """signs MODEL in shards of SHARD bytes with model_signing's library, bundle at MODEL/model.sig"""
    import pathlib, model_signing
    d = pathlib.Path(model)
    hashing = model_signing.hashing.Config().use_shard_serialization(shard_size=int(shard))
    c = model_signing.signing.Config().use_elliptic_key_signer(private_key=pathlib.Path(private))
    c.set_hashing_config(hashing.set_ignored_paths(paths=[d / "model.sig"]))
    c.sign(d, d / "model.sig")

def readall(expected, *paths):
    """ms to open and read each file whole, one after another"""
    t = time.perf_counter()
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(f.read())
    dt = time.perf_counter() - t
    if total != int(expected):
        sys.exit(f"read {total} bytes, expected {expected}")
    print(f"{dt * 1e3:.2f}")

SMALL = ["config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
         "added_tokens.json", "preprocessor_config.json", "chat_template.jinja", "processor_config.json",
         "adapter_config.json", "quantize_config.json", "README.md", "LICENSE", "model_card.md",
         "vocab.txt", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
         "vocab.json", "tokenizer.json"]

def gen_small(d):
    """20 files from 200 B to 500 KiB, sizes spaced geometrically; prints their total"""
    import base64, random
    rnd = random.Random(11)
    total = 0
    for i, name in enumerate(SMALL):
        n = round(200 * (512000 / 200) ** (i / (len(SMALL) - 1)))
        data = base64.b64encode(rnd.randbytes(n))[:n]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        total += n
    print(total)

def gen_loader(d, mb, seed=11, shards=4):
    """a sharded safetensors model of about `mb` MiB, random f16 tensors of 32 MiB at most,
    in the Hugging Face layout: model-0000N-of-0000M.safetensors and model.safetensors.index.json;
    another seed makes another model of the same shape (other bytes)"""
    import numpy as np
    from safetensors.numpy import save_file
    rng = np.random.default_rng(int(seed))
    shards = int(shards)
    per_shard = (int(mb) // shards) << 20
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors, left, i = {}, per_shard, 0
        while left > 0:
            n = min(32 << 20, left)
            key = f"model.layers.{s}.{i}.weight"
            tensors[key] = np.frombuffer(rng.bytes(n), dtype=np.float16).reshape(-1, 512)
            weight_map[key] = name
            left, i, total = left - n, i + 1, total + n
        save_file(tensors, os.path.join(d, name))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)

def shards(d):
    """the shard files of a model, in the order its index names them first (loaders' order)"""
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    print(" ".join(dict.fromkeys(index["weight_map"].values())), index["metadata"]["total_size"])

def load(framework, d):
    """seconds for safetensors to load every tensor of every shard (framework np or pt),
    from the open of the index to the last tensor. np copies each tensor out of the file;
    pt maps the file and gives views of the mapping, which are copied here (as a loader
    copies them into its parameters), so that every page is faulted in"""
    from safetensors import safe_open
    if framework == "pt":
        import torch  # noqa: F401  (imported before the clock starts, as a loader has it already)
        size = lambda t: (c := t.clone()).numel() * c.element_size()
    else:
        size = lambda t: t.nbytes
    t = time.perf_counter()
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    got = 0
    for shard in dict.fromkeys(index["weight_map"].values()):
        with safe_open(os.path.join(d, shard), framework) as f:
            for k in f.keys():
                got += size(f.get_tensor(k))
    dt = time.perf_counter() - t
    if got != index["metadata"]["total_size"]:
        sys.exit(f"loaded {got} bytes, index says {index['metadata']['total_size']}")
    print(f"{dt:.3f}")

def runai(total, base, *shards):
    """seconds for run:ai Model Streamer to stream every tensor of the shards (base: a directory
    or s3://bucket/prefix), from the streamer's start to the last tensor; its defaults"""
    out = os.dup(1)
    os.dup2(2, 1)  # what the streamer's native code prints goes to stderr, not into the figure
    import torch  # noqa: F401  (imported before the clock starts)
    from runai_model_streamer import SafetensorsStreamer
    paths = [base.rstrip("/") + "/" + s for s in shards]
    t = time.perf_counter()
    got = 0
    with SafetensorsStreamer() as s:
        s.stream_files(paths)
        for _name, tensor in s.get_tensors():
            got += tensor.numel() * tensor.element_size()
    dt = time.perf_counter() - t
    if got != int(total):
        sys.exit(f"streamed {got} bytes, expected {total}")
    os.write(out, f"{dt:.3f}\n".encode())

def drop(*paths):
    """drops these files from the page cache (fdatasync first: dirty pages would stay)"""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

def kill_reader(path, progress, killed, kills, size, sha, deadline):
    """Reads `path` in 1 MiB reads, writing its offset to `progress`. Past
    each of `kills` evenly spread points it waits (a few ms, at most 30 s)
    until the script has written that kill's number to `killed`, so every
    kill lands inside the read however fast it goes. On a dead mount
    (ENOTCONN, ECONNABORTED, EIO, ENOENT while remounting) it reopens and goes
    on at its offset. Prints 'ok' or 'mismatch', the errors seen, the opens."""
    size, kills, end = int(size), int(kills), time.monotonic() + float(deadline)
    h, off, fd, errors, opens, next_kill = hashlib.sha256(), 0, None, 0, 0, 1
    transient = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENOENT, errno.ESTALE}
    def done_kills():
        try:
            with open(killed) as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0
    while off < size:
        if time.monotonic() > end or errors > 5000:
            sys.exit(f"gave up at {off} of {size} after {errors} errors")
        try:
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                opens += 1
            b = os.pread(fd, 1 << 20, off)
            if not b:
                sys.exit(f"unexpected end of file at {off}")
            h.update(b)
            off += len(b)
            with open(progress + ".tmp", "w") as p:
                p.write(str(off))
            os.replace(progress + ".tmp", progress)
            while next_kill <= kills and off >= size * next_kill // (kills + 1):
                wait_until = time.monotonic() + 30
                while done_kills() < next_kill and time.monotonic() < wait_until:
                    time.sleep(0.002)
                next_kill += 1
        except OSError as e:
            if e.errno not in transient:
                raise
            errors += 1
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                fd = None
            time.sleep(0.01)
    print("ok" if h.hexdigest() == sha else "mismatch", errors, opens)

def gen_catalog(n, manifest, local=""):
    """n models of three 1 MiB files (one chunk each; hashes made up, sources
    never asked) as a manifest; and, given `local`, the same tree of empty
    (sparse) files"""
    with open(manifest, "w") as f:
        f.write("version = 1\n")
        for i in range(int(n)):
            mid = f"model-{i:06d}"
            f.write(f'\n[[model]]\nid = "{mid}"\nsources = ["http://127.0.0.1:9/{mid}"]\n')
            for name in ("config.json", "tokenizer.json", "model.safetensors"):
                h = hashlib.sha256(f"{mid}/{name}".encode()).hexdigest()
                f.write(f'\n[[model.file]]\npath = "{name}"\nsize = 1048576\nsha256 = "{h}"\n'
                        f'chunk_size = 1048576\nchunks = [\n  "{h}",\n]\n')
                if local:
                    os.makedirs(os.path.join(local, mid), exist_ok=True)
                    with open(os.path.join(local, mid, name), "wb") as g:
                        g.truncate(1 << 20)

def reload_reads(mnt, model_dir, manifest, pid, modelfs, log, readers="8"):
    """Readers open and read cached files of the mount in a loop while the
    mount reloads its manifest (one model appended). Prints the longest
    open + 1 MiB read of any reader begun during the swap (the `swap_ms`
    before the mount's log line), overlapping it, during the whole
    reload and before it (ms), how long `modelfs reload` took (s), and the
    mount's RSS before and after it (MB)."""
    import datetime, multiprocessing, random, re, subprocess
    multiprocessing = multiprocessing.get_context("fork")  # the readers are closures
    files = [os.path.join(model_dir, f) for f in sorted(os.listdir(model_dir))]
    stop = multiprocessing.Event()
    out = multiprocessing.Queue()

    def reader(seed):
        rnd, seen = random.Random(int(seed)), []
        while not stop.is_set():
            path = rnd.choice(files)
            t = time.time()
            fd = os.open(path, os.O_RDONLY)
            size = os.fstat(fd).st_size
            os.pread(fd, 1 << 20, rnd.randrange(0, max(1, size - (1 << 20))))
            os.close(fd)
            seen.append((t, time.time() - t))
        out.put(seen)

    def rss():
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) * 1024 / 1e6 for l in f if l.startswith("VmRSS"))

    procs = [multiprocessing.Process(target=reader, args=(i,)) for i in range(int(readers))]
    for p in procs:
        p.start()
    time.sleep(2)
    before = rss()
    with open(manifest, "a") as f:
        h = hashlib.sha256(b"added").hexdigest()
        f.write(f'\n[[model]]\nid = "added"\nsources = ["http://127.0.0.1:9/added"]\n'
                f'\n[[model.file]]\npath = "w.bin"\nsize = 1048576\nsha256 = "{h}"\n')
    start = time.time()
    subprocess.run([modelfs, "reload", mnt], check=True, stdout=subprocess.DEVNULL)
    end = time.time()
    if not os.path.exists(os.path.join(mnt, "added")):
        sys.exit("the added model is not listed after the reload")
    time.sleep(1)
    stop.set()
    seen = [s for _ in procs for s in out.get()]
    for p in procs:
        p.join()
    after = rss()
    line = [l for l in open(log) if "reloaded the manifest" in l][-1]
    logged = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    swap = float(re.search(r"swap_ms=([0-9.]+)", line).group(1)) / 1000
    overlapping = lambda a, b: max([d for t, d in seen if t <= b and t + d >= a] or [0])
    # The line is logged a moment after the swap ends: 10 ms of slack.
    swap_from, swap_to = logged - swap - 0.01, logged
    began_in_swap = max([d for t, d in seen if swap_from <= t <= swap_to] or [0])
    worst_swap = overlapping(swap_from, swap_to)
    worst = overlapping(start, end)
    base = max(d for t, d in seen if t + d < start)
    print(f"{began_in_swap * 1000:.1f} {worst_swap * 1000:.1f} {worst * 1000:.1f} {base * 1000:.1f} "
          f"{end - start:.3f} {swap * 1000:.1f} {before:.1f} {after:.1f}")

def peak(*cmd):
    """seconds a command took and its peak RSS in MB; fails if it did"""
    import resource, subprocess
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    print(f"{dt:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6:.1f}")

globals()[sys.argv[1].replace("-", "_")](*sys.argv[2:])
