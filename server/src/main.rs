//! `adclickd`: one adclick server node. See `adclickd --help` and the README.

use clap::Parser;

use adclick_server::config::{Config, Flags};

/// mimalloc instead of glibc malloc: the apply path allocates and frees many small
/// buffers per click, and glibc's arena bookkeeping (`_int_malloc`, `malloc_consolidate`)
/// took ~13% of a loaded node's CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let config = match Config::resolve(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("adclickd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("adclickd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("adclickd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(adclick_server::server::run(
        config,
        adclick_server::server::shutdown_signal(),
    )) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("adclickd failed: {e:#}");
            eprintln!("adclickd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
