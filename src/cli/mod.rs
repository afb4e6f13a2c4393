//! The command line: parse arguments, call into the library, turn errors into
//! messages and exit codes (0 ok, 1 runtime failure, 2 usage or manifest error).

mod chunk;
mod daemon;
mod follow;
mod fstab;
mod gc;
mod mount;
mod prefetch;
mod reload;
mod remote;
mod report;
mod verify;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use clap::{Args, Parser, Subcommand};

use crate::cache::{Cache, Catalog, Quota};
use crate::manifest::{
    BuildOptions, Manifest, ManifestError, build_entry, build_hub_entry, build_signable_entry,
};
use crate::signature::{Signatures, Trust, TrustedKey};
use crate::source::{Sources, Timeouts};
use crate::units::parse_size;

#[derive(Parser)]
#[command(
    name = "modelfs",
    version,
    about = "Mount ML models from a manifest: listed at once, fetched lazily chunk by chunk, verified, cached",
    long_about = "modelfs shows every model of a manifest as a read-only tree MOUNTPOINT/<model>/<file>.\n\
                  Nothing is downloaded until a file is read; then only the chunks needed (plus readahead)\n\
                  are fetched, each verified against its sha256 before a byte is served, into a cache\n\
                  directory that survives unmounts and crashes.\n\n\
                  Logging: MODELFS_LOG (e.g. MODELFS_LOG=debug, or modelfs=debug,reqwest=info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ManifestArg {
    /// The manifest (TOML) describing models, files and sources: modelfs's
    /// own, or the Model Orchestrator's models.toml (told apart by its keys).
    /// A URL (http(s)://, s3://bucket/key) is fetched by mount and prefetch,
    /// its last good copy kept in the cache dir for a start with no network
    /// and for ls and status [default: $MODELFS_MANIFEST, else
    /// $WAN_MODELS_MANIFEST].
    #[arg(long, short = 'm', env = "MODELFS_MANIFEST", value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Where the orchestrator's local://REL sources live (REL under DIR);
    /// without it they are skipped [default: $MODELFS_LOCAL_ROOT, else $MODELS_ROOT].
    #[arg(long, env = "MODELFS_LOCAL_ROOT", value_name = "DIR")]
    local_root: Option<PathBuf>,
}

impl ManifestArg {
    fn path(&self) -> Result<PathBuf, UsageError> {
        self.manifest
            .clone()
            .or_else(|| std::env::var_os("WAN_MODELS_MANIFEST").map(PathBuf::from))
            .ok_or_else(|| {
                UsageError(
                    "no manifest: give -m FILE, or set MODELFS_MANIFEST (or WAN_MODELS_MANIFEST)"
                        .into(),
                )
            })
    }

    fn load(&self) -> anyhow::Result<Manifest> {
        Ok(self.load_in(None, None)?.manifest)
    }

    /// `--local-root`, else `$MODELS_ROOT`.
    fn local_root(&self) -> Option<PathBuf> {
        self.local_root
            .clone()
            .or_else(|| std::env::var_os("MODELS_ROOT").map(PathBuf::from))
    }

    /// The manifest; one named by URL is kept in `cache_root`, and fetched
    /// with `online`'s timeouts (without, its kept copy is read if there is
    /// one: no network). With why, when a kept copy stands in for a
    /// manifest that could not be fetched or did not validate.
    fn load_in(
        &self,
        cache_root: Option<&Path>,
        online: Option<&SourceArgs>,
    ) -> anyhow::Result<remote::Loaded> {
        let root = self.local_root();
        let path = self.path()?;
        match remote::location(&path) {
            Some(location) => remote::load(
                &path.to_string_lossy(),
                &location,
                cache_root,
                online.map(SourceArgs::timeouts),
                root.as_deref(),
            ),
            None => Ok(remote::Loaded::fresh(Manifest::load(
                &path,
                root.as_deref(),
            )?)),
        }
    }
}

#[derive(Args, Clone)]
struct CacheArg {
    /// Cache directory [default: $MODELFS_CACHE_DIR, else $XDG_CACHE_HOME/modelfs, else ~/.cache/modelfs].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl CacheArg {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Ok(dir.clone());
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("MODELFS_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("modelfs")))
            .or_else(|| env("HOME").map(|h| h.join(".cache/modelfs")))
            .ok_or_else(|| {
                UsageError("no cache directory: pass --cache-dir or set MODELFS_CACHE_DIR".into())
                    .into()
            })
    }
}

/// The cache's size limit (mount, prefetch, gc).
#[derive(Args, Clone)]
struct QuotaArg {
    /// Most bytes the cache may take on disk, e.g. 500G [default: the smallest
    /// quota of the live mounts of this cache, else none]. A free-space floor
    /// of 5% of the file system holds either way.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_cache_size: Option<u64>,
}

impl QuotaArg {
    /// For commands that neither fetch nor evict.
    fn none() -> QuotaArg {
        QuotaArg {
            max_cache_size: None,
        }
    }

    fn resolve(&self, cache_root: &Path) -> Quota {
        Quota {
            max_bytes: self
                .max_cache_size
                .or_else(|| report::mounts_quota(&report::live_mounts(cache_root))),
        }
    }
}

/// How patient to be with sources (mount, prefetch).
#[derive(Args, Clone)]
struct SourceArgs {
    /// Seconds to wait for a connection to a source.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    connect_timeout: Duration,
    /// Seconds a source may go silent mid-request before the attempt fails.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    read_timeout: Duration,
    /// Seconds a request may bring nothing (its first byte included) before
    /// the rest of its range is asked of the next source, and the silent one
    /// is tried last for a while (4 s, doubling while it stays bad, at most
    /// 30 s). A request far slower than the other sources (8 times their
    /// rate, or 1 MiB/s while theirs is unknown) moves on the same way.
    /// With one source, a fresh connection takes over; one that brings
    /// nothing doubles the wait, up to --read-timeout.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_seconds)]
    stall_timeout: Duration,
    /// Seconds one ranged request may take in all (a source trickling bytes
    /// is cut off; the retry resumes). Raise it for slow links or big chunks.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_seconds)]
    request_timeout: Duration,
}

impl SourceArgs {
    /// A fetcher on `cache` with these sources, and a runtime to drive it:
    /// for the commands that fetch outside a mount.
    fn fetcher(
        &self,
        cache: &std::sync::Arc<Cache>,
    ) -> anyhow::Result<(crate::fetch::Fetcher, tokio::runtime::Runtime)> {
        let fetcher = crate::fetch::Fetcher::new(
            std::sync::Arc::clone(cache),
            self.build()?,
            self.retry(),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok((fetcher, runtime))
    }

    fn retry(&self) -> crate::fetch::RetryPolicy {
        crate::fetch::RetryPolicy {
            stall: self.stall_timeout,
            read_timeout: self.read_timeout,
            ..Default::default()
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            read: self.read_timeout,
            request: self.request_timeout,
        }
    }

    fn build(&self) -> anyhow::Result<Sources> {
        sources(self.timeouts())
    }
}

/// What a publisher who just wrote a chunk list does next, on stderr.
fn signing_advice(dir: &Path) {
    let (list, bundle) = (
        dir.join(crate::manifest::chunk_list::CHUNK_LIST),
        dir.join("model.sig"),
    );
    eprintln!(
        "modelfs: wrote {}; sign the model with it now:",
        list.display()
    );
    eprintln!(
        "  model_signing sign key {} --private_key KEY.pem --signature {}",
        dir.display(),
        bundle.display()
    );
    if bundle.exists() {
        eprintln!(
            "modelfs: {} was made before this list, which it does not sign: sign again",
            bundle.display()
        );
    }
}

/// Whose signatures to trust (mount, prefetch, verify).
#[derive(Args, Clone)]
struct SignatureArgs {
    /// A publisher's public key: PEM, ECDSA P-256 or P-384, as
    /// `model_signing sign key` pairs them; repeatable. A model that names
    /// a signature bundle (`signature = "model.sig"`) is then served only if
    /// the bundle verifies against one of these keys and signs each of its
    /// files with the sha256 the manifest gives; checked at the model's
    /// first open, never by a listing. Files signed whole are served once
    /// all of each verified (see the README). Without a key, bundles are not
    /// checked.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    /// Also refuse every model that names no signature bundle. Without it,
    /// whoever can edit the manifest can drop a model's `signature` line and
    /// have it served unsigned: give it when the manifest is not trusted.
    #[arg(long, requires = "trusted_keys")]
    require_signatures: bool,
}

impl SignatureArgs {
    /// The keys, read now: a bad key file is a usage error, before anything
    /// is mounted or fetched.
    fn trust(&self) -> anyhow::Result<Trust> {
        let keys = self
            .trusted_keys
            .iter()
            .map(|path| TrustedKey::load(path).map_err(|e| UsageError(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Trust {
            keys,
            require: self.require_signatures,
        })
    }
}

/// The checker for `trust`, if it trusts any key.
fn signatures(
    trust: Trust,
    timeouts: Timeouts,
    cache: &Cache,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<Option<Signatures>> {
    if !trust.is_active() {
        return Ok(None);
    }
    Ok(Some(Signatures::new(
        trust,
        sources(timeouts)?,
        cache.root(),
        metrics,
    )))
}

fn sources(timeouts: Timeouts) -> anyhow::Result<Sources> {
    Sources::new(timeouts).context("cannot set up the clients for sources")
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    parse_seconds_or_zero(text)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

/// As [`parse_seconds`], 0 included (for "never").
fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    text.parse()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

#[derive(Subcommand)]
enum Command {
    /// Mount the models of a manifest at MOUNTPOINT (foreground unless --daemon).
    Mount(mount::MountArgs),
    /// Unmount a modelfs mount; the mount process then exits cleanly.
    Umount {
        /// The mounted directory.
        mountpoint: PathBuf,
        /// If files are open under it, detach it now anyway: it is gone from
        /// the directory tree at once, and the kernel ends it (and the mount
        /// process exits) when the last of them is closed.
        #[arg(long)]
        lazy: bool,
    },
    /// Have a mount read its manifest again (file or URL) and serve it, with no remount.
    ///
    /// Models added appear, removed ones vanish (files open keep reading to
    /// the end), a file whose content changed is a new file (open ones keep
    /// the old bytes); the rest keeps its inodes and cache. A manifest that
    /// cannot be had or used changes nothing: the error is printed (exit 1)
    /// and shown by /healthz. Sends SIGHUP to the mount's process, as
    /// `kill -HUP` would, and waits for its reload to end. A mount also
    /// follows its manifest without this: see `mount --manifest-refresh`.
    Reload {
        /// The mounted directory.
        mountpoint: PathBuf,
        /// How long to wait for the reload to end.
        #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_seconds)]
        timeout: std::time::Duration,
    },
    /// List models (id, files, size, cached, pinned), or one model's files. No network.
    Ls {
        /// Show this model's files.
        model: Option<String>,
        /// One JSON object per line: per model, or per file of MODEL.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        manifest: ManifestArg,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Show what the cache holds of each model, and which mounts use it. No network, no changes.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        manifest: ManifestArg,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Fetch and verify whole models now, with progress; print each one's ready path.
    ///
    /// The path, CACHE/models/<id>/, is a tree of links to the cached files that
    /// loaders can use without a mount. Models already complete cost nothing;
    /// safe to run while mounts use the same cache (each chunk is fetched once).
    Prefetch(prefetch::PrefetchArgs),
    /// Evict least recently used, unpinned, unused models until the cache fits its quota.
    ///
    /// Files open in any process and files of pinned models stay. The cache must
    /// also leave 5% of its file system free. --dry-run shows what would go.
    Gc(gc::GcArgs),
    /// Keep a model's files from eviction (recorded in the cache, for every manifest).
    Pin(gc::PinArgs),
    /// Let a pinned model be evicted again.
    Unpin(gc::PinArgs),
    /// Re-hash what the cache holds of models; drop what is bad (exit 1 if anything was).
    Verify(verify::VerifyArgs),
    /// Write and check manifests.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Print a shell completion script, e.g. `modelfs completions bash > /etc/bash_completion.d/modelfs`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `modelfs man > /usr/local/share/man/man1/modelfs.1`.
    Man,
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Print a [[model]] entry (sizes, sha256, chunk hashes) for the files under DIR.
    ///
    /// The output is one model entry; a manifest is `version = 1` followed by
    /// such entries, e.g.:
    ///   echo 'version = 1' > models.toml
    ///   modelfs manifest build ./llama --id llama@1 --source https://mirror/llama >> models.toml
    ///
    /// With --hf ORG/NAME[@REVISION] instead of DIR, the entry comes from the
    /// Hugging Face hub's API ($HF_ENDPOINT, $HF_TOKEN): sizes and LFS sha256 of
    /// the large files, the small ones fetched and hashed; it sets `repo` and
    /// `revision` (the exact commit) and the source hf://ORG/NAME@COMMIT.
    Build {
        /// Directory holding the model's files (symlinks are followed).
        #[arg(required_unless_present = "hf", conflicts_with = "hf")]
        dir: Option<PathBuf>,
        /// Describe a Hugging Face repo, at a revision (default main), from the hub's API.
        #[arg(long, value_name = "ORG/NAME[@REVISION]")]
        hf: Option<String>,
        /// Model id: the directory name under the mount ([A-Za-z0-9._@+-], up to 128
        /// characters) [default with --hf: the repo's name].
        #[arg(long, required_unless_present = "hf")]
        id: Option<String>,
        /// Base URL the files can be fetched from (repeatable; tried in order).
        #[arg(long = "source", value_name = "URL")]
        sources: Vec<String>,
        /// Chunk size, the unit of verification: a power of two from 64K to 64M
        /// [default: 1M]. Requests span many chunks, so smaller chunks cost no
        /// throughput; they make a random read wait for less.
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Optional description.
        #[arg(long)]
        description: Option<String>,
        /// For a publisher about to sign the model: also write
        /// DIR/modelfs-chunks.json, the chunk hashes of the files, which the
        /// signature then covers, so that mounts with --trusted-key read the
        /// model lazily; the entry names the bundle to come
        /// (`signature = "model.sig"`). Then sign, e.g. `model_signing sign
        /// key DIR --private_key KEY --signature DIR/model.sig`.
        #[arg(long, conflicts_with = "hf", requires = "sources")]
        chunk_list: bool,
        #[command(flatten)]
        timeouts: SourceArgs,
    },
    /// Add chunk hashes to the files of a manifest that has none, so reads become lazy.
    ///
    /// Prints the manifest, everything in it as it was (the orchestrator's
    /// models.toml included), with `chunk_size` and `chunks` added to each file
    /// that had no chunk hashes. Each such file is fetched once from its
    /// sources, verified whole and stored in the cache, so the first mount
    /// afterwards is warm:
    ///   modelfs manifest chunk -m models.toml > models.chunked.toml
    Chunk(chunk::ChunkArgs),
    /// Validate a manifest; errors name the line, column and field (exit 2).
    Check {
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Print the orchestrator's models.toml with every file its `allow_patterns` match added.
    ///
    /// For each model with `allow_patterns` and an hf:// source, the hub's API
    /// lists the repo at that revision; each file a pattern matches (fnmatch,
    /// as the hub's client: `*` crosses `/`) that the model does not list is
    /// added as a `[[models."<id>".files]]` table at the end, with its size and
    /// sha256 (from the API for LFS files, so none is downloaded; small files
    /// are fetched and hashed). The rest of the text is kept as it was. Mount
    /// the result: listing it needs no network.
    ///   modelfs manifest expand -m models.toml > models.expanded.toml
    Expand {
        #[command(flatten)]
        manifest: ManifestArg,
        #[command(flatten)]
        timeouts: SourceArgs,
    },
}

/// Bad arguments or input the user must fix: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A subcommand first is an ordinary call, whatever files exist here.
    let subcommand = args.get(1).and_then(|a| a.to_str()).is_some_and(|first| {
        <Cli as clap::CommandFactory>::command()
            .get_subcommands()
            .any(|c| c.get_name() == first)
    });
    let helper_call = if subcommand {
        None
    } else {
        fstab::translate(&args)
    };
    let cli = match helper_call {
        None => Cli::parse(),
        Some(Ok(mount)) => Cli::parse_from(mount),
        Some(Err(e)) => {
            eprintln!("modelfs: {e}");
            return 2;
        }
    };
    if !cli.command.may_fetch() {
        die_on_closed_pipe();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("modelfs: {e:#}");
            if e.downcast_ref::<ManifestError>().is_some()
                || e.downcast_ref::<UsageError>().is_some()
            {
                2
            } else {
                1
            }
        }
    }
}

impl Command {
    /// Whether the command may talk to a source. Those keep SIGPIPE
    /// ignored, as Rust sets it: a socket the server closed must fail a
    /// write (hyper's vectored writes carry no MSG_NOSIGNAL), not kill a
    /// mount or a prefetch.
    fn may_fetch(&self) -> bool {
        matches!(
            self,
            Command::Mount(_) | Command::Prefetch(_) | Command::Manifest(_)
        )
    }
}

/// Output piped into a reader that stops early (`modelfs ls | head`) then
/// ends the command as it ends coreutils' `ls`, by SIGPIPE, rather than
/// with a panic in `println!` and a backtrace.
fn die_on_closed_pipe() {
    // SAFETY: restores a signal's default disposition; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Mount(args) => mount::mount(args).map(|()| 0),
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy).map(|()| 0),
        Command::Reload {
            mountpoint,
            timeout,
        } => reload::reload(&mountpoint, timeout),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "modelfs", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            page.render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            Ok(0)
        }
        Command::Prefetch(args) => prefetch::prefetch(args),
        Command::Gc(args) => gc::gc(args),
        Command::Pin(args) => gc::pin(args, true),
        Command::Unpin(args) => gc::pin(args, false),
        Command::Verify(args) => verify::verify(args),
        Command::Ls {
            model,
            json,
            manifest,
            cache,
        } => {
            init_logging("warn");
            let cache = cache.resolve()?;
            let manifest = manifest.load_in(Some(&cache), None)?.manifest;
            report::ls(&manifest, &cache, model.as_deref(), json).map(|()| 0)
        }
        Command::Status {
            json,
            manifest,
            cache,
        } => {
            init_logging("warn");
            let cache = cache.resolve()?;
            let manifest = manifest.load_in(Some(&cache), None)?.manifest;
            report::status(&manifest, &cache, json).map(|()| 0)
        }
        Command::Manifest(ManifestCommand::Build {
            dir,
            hf,
            id,
            sources,
            chunk_size,
            description,
            chunk_list,
            timeouts,
        }) => {
            init_logging("warn");
            let opts = BuildOptions {
                id: id.unwrap_or_default(),
                sources,
                chunk_size,
                description,
            };
            let built = match (hf, dir) {
                (Some(spec), _) => {
                    let clients = timeouts.build()?;
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start the async runtime")?
                        .block_on(build_hub_entry(&clients, &spec, opts))
                }
                (None, Some(dir)) if chunk_list => {
                    let entry = build_signable_entry(&dir, &opts);
                    if entry.is_ok() {
                        signing_advice(&dir);
                    }
                    entry
                }
                (None, Some(dir)) => build_entry(&dir, &opts),
                (None, None) => Err(crate::manifest::BuildError::Invalid(
                    "give a directory, or --hf ORG/NAME".into(),
                )),
            };
            let text = built.map_err(|e| match e {
                crate::manifest::BuildError::Invalid(m) => anyhow::Error::new(UsageError(m)),
                other => anyhow::Error::new(other),
            })?;
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(0)
        }
        Command::Manifest(ManifestCommand::Chunk(args)) => chunk::chunk(args),
        Command::Manifest(ManifestCommand::Expand { manifest, timeouts }) => {
            init_logging("warn");
            let path = manifest.path()?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let parsed = Manifest::parse_with(&path, &text, manifest.local_root().as_deref())?;
            let clients = timeouts.build()?;
            let (expanded, added) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(crate::manifest::expand(&clients, &parsed, &text))?;
            // What the text says is checked as any manifest is; its lines
            // are the expanded text's, not the file's.
            let named = PathBuf::from(format!("{} (expanded)", path.display()));
            Manifest::parse_with(&named, &expanded, manifest.local_root().as_deref())?;
            std::io::stdout().write_all(expanded.as_bytes())?;
            for (model, files) in added {
                eprintln!("{model}: {files} files added by allow_patterns");
            }
            Ok(0)
        }
        Command::Manifest(ManifestCommand::Check { manifest }) => {
            let m = manifest.load()?;
            let files: usize = m.models.iter().map(|m| m.files.len()).sum();
            let bytes: u64 = m.models.iter().flat_map(|m| &m.files).map(|f| f.size).sum();
            writeln!(
                std::io::stdout(),
                "{}: ok, {} models, {files} files, {}",
                manifest.path()?.display(),
                m.models.len(),
                crate::units::format_size(bytes)
            )?;
            Ok(0)
        }
    }
}

/// The index of model `id`, or a usage error that lists the models there are.
fn model_index(manifest: &Manifest, id: &str) -> Result<usize, UsageError> {
    manifest.model_index(id).ok_or_else(|| {
        let known: Vec<_> = manifest.models.iter().map(|m| m.id.as_str()).collect();
        UsageError(format!(
            "no model {id:?} in {} (models: {})",
            manifest.path.display(),
            known.join(", ")
        ))
    })
}

/// Opens (creating) the cache for a command that fetches or evicts: with
/// the manifest's models and the quota, and without a crashed process's
/// temporary files.
fn open_cache(
    cache: &CacheArg,
    quota: &QuotaArg,
    manifest: &std::sync::Arc<Manifest>,
) -> anyhow::Result<std::sync::Arc<Cache>> {
    let root = cache.resolve()?;
    let cache = Cache::open(&root)
        .with_context(|| format!("cache {}", root.display()))?
        .with_quota(quota.resolve(&root))
        .with_catalog(Catalog::new(std::sync::Arc::clone(manifest)));
    let swept = cache
        .sweep_temp()
        .with_context(|| format!("cannot sweep {}", cache.root().join("tmp").display()))?;
    if swept > 0 {
        tracing::info!(removed = swept, "removed temporary files of dead processes");
    }
    Ok(std::sync::Arc::new(cache))
}

/// The indexes of models `ids`, or of every model when there are none.
fn model_indices(manifest: &Manifest, ids: &[String]) -> Result<Vec<usize>, UsageError> {
    if ids.is_empty() {
        return Ok((0..manifest.models.len()).collect());
    }
    ids.iter().map(|id| model_index(manifest, id)).collect()
}

/// Logs to stderr, filtered by MODELFS_LOG (default `default`). fuser's own
/// warnings are mostly noise for users (it warns when a mount it already saw
/// go away fails to unmount), so it speaks only of errors unless asked.
fn init_logging(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},fuser=error")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
