//! `rvs`: one binary for the service data plane.

mod check;
mod echo;
mod kube;
mod load;
mod ls;
mod run;
mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rvs",
    version,
    about = "Rust Virtual Server: a Kubernetes service data plane with IPVS's model"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info`, `rvs_l4=debug`.
    #[arg(long, global = true, env = "RVS_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Proxy every Service (and Ingress) of a manifest directory or the Kubernetes API to its endpoints.
    Run(Box<run::RunArgs>),
    /// Validate a manifest directory: one line per problem, non-zero exit if any.
    Check {
        /// The manifest directory.
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
    },
    /// Print the live table like `ipvsadm -Ln --stats`, read from a running rvs.
    Ls {
        /// The admin address of the running rvs.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// List connections instead (like `ipvsadm -Lnc`).
        #[arg(short = 'c', long)]
        connections: bool,
        /// Print the JSON the admin API returns.
        #[arg(long)]
        json: bool,
    },
    /// A small backend for trying rvs out: answers with its name and the client it saw.
    Echo(echo::EchoArgs),
    /// Remove rvs's nftables tables (what `rvs run --engine nftables` leaves on exit).
    Cleanup,
    /// Validating admission webhook for Ingresses (AdmissionReview v1 over HTTPS).
    Webhook(Box<webhook::WebhookArgs>),
    /// Many short HTTP/1.0 connections to one address: connect times (stalls), backends seen.
    Load(load::LoadArgs),
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (like 1s, 500ms, 5m): {e}"))
}

// The gateway allocates and frees small buffers per request; mimalloc's thread-local free
// lists make that markedly cheaper than glibc malloc (see docs/benchmarks.md, L7). Built
// without transparent huge pages (`no_thp`): a 2 MiB page stays resident while any byte of
// it is used, which kept freed buffers of idle connections in RSS (7.1 vs 5.1 KiB per idle
// connection).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Called as a runtime worker goes idle: returns the memory other threads freed on this
/// thread's mimalloc pages. mimalloc reclaims such frees only when the owning thread
/// allocates from those pages again, and work stealing frees a connection's buffers on
/// whichever worker runs it last: after a burst of 10,000 connections the idle workers kept
/// 16 KiB per parked connection instead of 2.6. At most once a millisecond per thread (a
/// collect takes ~2 µs on average; workers may park thousands of times a second).
fn collect_freed_memory() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now.duration_since(at) >= Duration::from_millis(1));
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: mi_collect has no preconditions and is thread-safe (it collects this
        // thread's heap and, shared with other threads under mimalloc's own locks, abandoned
        // segments and arenas).
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

/// mimalloc's `mi_option_purge_delay` (v3's option enum; the crate exports no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// v3's default purge delay, in milliseconds.
const MI_DEFAULT_PURGE_DELAY: std::ffi::c_long = 1000;

/// How long mimalloc keeps freed pages before giving them back to the kernel (at its next
/// collection after that). Its default, a second, kept the buffers of just-parked idle
/// connections resident that much longer (10,000 clients 2 s after they went quiet: 55-71 MiB
/// with it, 25-27 MiB with 250 ms and upstream parking after 250 ms); 250 ms cost no
/// measurable HTTP/1.1 throughput where purging at once cost 5-12%. Changed only from the default: a
/// delay set in the environment (`MIMALLOC_PURGE_DELAY` or its older names) still decides,
/// and a different default would mean the option index is not what this was written for.
fn shorten_purge_delay() {
    // SAFETY: called first thing in main, before any other thread exists (the setter is not
    // thread-safe); mimalloc reads the option each time it purges, so a later set applies.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_DEFAULT_PURGE_DELAY {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 250);
        }
    }
}

fn main() -> std::process::ExitCode {
    shorten_purge_delay();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    // On one CPU (or pinned to one) a work-stealing scheduler only adds synchronization:
    // the single-threaded one serves about 10% more gateway requests per CPU second there.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder
        .enable_all()
        .on_thread_park(collect_freed_memory)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rvs: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Check { dir } => check::check(&dir),
            Command::Ls {
                admin,
                connections,
                json,
            } => ls::ls(admin, connections, json).await,
            Command::Echo(args) => echo::echo(args).await,
            Command::Load(args) => load::load(args).await,
            Command::Webhook(args) => webhook::webhook(*args).await,
            Command::Cleanup => {
                rvs_nft::NftEngine::new(Default::default())
                    .remove_all()
                    .await?;
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rvs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_option_index_names_purge_delay() {
        if let Some((name, _)) = std::env::vars_os().find(|(name, _)| {
            let name = name.to_string_lossy().to_ascii_uppercase();
            name == "MIMALLOC_PURGE_DELAY" || name == "MIMALLOC_RESET_DELAY"
        }) {
            println!("skipped: {name:?} is set, so the default cannot be checked");
            return;
        }
        // Of mimalloc v3's options only purge_delay defaults to 1000 (ms); its neighbours
        // (eager commit delay, NUMA nodes) default to 1 and 0.
        // SAFETY: a read of an option, thread-safe.
        let value = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, MI_DEFAULT_PURGE_DELAY);
    }
}
