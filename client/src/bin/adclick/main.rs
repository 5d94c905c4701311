//! `adclick`: the command-line tool for an adclick cluster — ingest click files, ask for
//! counts and top ads, manage filters, look at the cluster, and run a local three-node
//! cluster with demo traffic (`adclick dev`).
//!
//! Exit status: 0 on success; 1 when a command fails (the message says why); 2 for a usage
//! error; 3 when `ingest` finished but some lines were bad, rejected or not confirmed
//! (each is reported with its line number).

mod dev;
mod ingest;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use adclick_client::model::AdId;
use adclick_client::{Client, ClientConfig, CountQuery, ReadConsistency, TimeSpec, TopQuery};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use output::Output;

/// Command-line tool for adclick, the replicated ad-click counting store.
#[derive(Debug, Parser)]
#[command(name = "adclick", version, about, max_term_width = 100)]
struct Cli {
    /// gRPC address(es) of any cluster node(s), host:port, comma-separated.
    #[arg(
        long,
        global = true,
        env = "ADCLICK_CLUSTER",
        default_value = "127.0.0.1:7401",
        value_name = "HOST:PORT[,...]"
    )]
    cluster: String,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// How long one call may take, retries included, in seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest clicks from a file or stdin (seed text format or JSON lines).
    Ingest(ingest::IngestArgs),
    /// Count one ad's clicks over a time range.
    Count(CountArgs),
    /// The most clicked ads over a time range.
    Top(TopArgs),
    /// Create, list or drop filters.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Look at the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a local three-node cluster on loopback with demo traffic and a live top 10.
    Dev(dev::DevArgs),
}

/// A query's time range and options.
#[derive(Debug, Args)]
#[group(id = "range", required = true, multiple = true)]
struct RangeArgs {
    /// The last M minutes, ending with the serving node's current minute.
    #[arg(long, value_name = "M", conflicts_with_all = ["from", "to"])]
    last: Option<u32>,
    /// Start of the range (included): RFC 3339, epoch ms, or `YYYY-MM-DD HH:MM:SS` (UTC).
    #[arg(long, value_name = "T", requires = "to")]
    from: Option<String>,
    /// End of the range (excluded), in the same forms as --from.
    #[arg(long, value_name = "T", requires = "from")]
    to: Option<String>,
}

impl RangeArgs {
    fn spec(&self) -> anyhow::Result<TimeSpec> {
        match (&self.last, &self.from, &self.to) {
            (Some(m), None, None) => Ok(TimeSpec::last(*m)?),
            (None, Some(from), Some(to)) => Ok(TimeSpec::between(
                output::parse_time("--from", from)?,
                output::parse_time("--to", to)?,
            )?),
            _ => anyhow::bail!("give either --last M or both --from and --to"),
        }
    }
}

#[derive(Debug, Args)]
struct ReadArgs {
    /// Count only clicks matching this registered filter.
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Answer from the serving node's applied state without confirming with the leader
    /// (cheaper; may miss the latest writes).
    #[arg(long)]
    stale: bool,
}

impl ReadArgs {
    fn filter(&self) -> anyhow::Result<Option<adclick_client::FilterName>> {
        self.filter
            .as_deref()
            .map(adclick_client::FilterName::new)
            .transpose()
            .map_err(Into::into)
    }

    fn consistency(&self) -> ReadConsistency {
        if self.stale {
            ReadConsistency::Stale
        } else {
            ReadConsistency::Linearizable
        }
    }
}

#[derive(Debug, Args)]
struct CountArgs {
    /// The ad.
    ad_id: String,
    #[command(flatten)]
    range: RangeArgs,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Debug, Args)]
struct TopArgs {
    /// How many ads (1 to 1000).
    #[arg(short, long, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    n: u32,
    #[command(flatten)]
    range: RangeArgs,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Debug, Subcommand)]
enum FilterCommand {
    /// Register a filter, e.g. `adclick filter create us_private 'country = "USA" and ip in
    /// 10.0.0.0/8'`. Registering the same name and expression again succeeds.
    Create {
        /// Its name: 1 to 64 characters of [A-Za-z0-9_.-].
        name: String,
        /// The predicate, in the filter language (docs/filters.md).
        expr: String,
    },
    /// List the registered filters.
    List,
    /// Drop a filter and its counters (succeeds if it does not exist).
    Drop {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Nodes, groups, leaders and lags, as one node sees them.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("adclick: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("adclick: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Output::new(cli.json);
    let mut config = ClientConfig::default();
    config.deadline = Duration::from_secs(cli.timeout);
    let connect = || async {
        Client::connect_with([cli.cluster.as_str()], config.clone())
            .await
            .with_context(|| format!("connecting to {}", cli.cluster))
    };
    match cli.command {
        Command::Dev(args) => dev::run(args, &out).await,
        Command::Ingest(args) => ingest::run(connect().await?, args, &out).await,
        Command::Count(args) => {
            let query = CountQuery {
                ad_id: AdId::new(&args.ad_id)?,
                range: args.range.spec()?,
                filter: args.read.filter()?,
                consistency: args.read.consistency(),
            };
            let answer = connect().await?.count(query).await?;
            out.count(&args.ad_id, &answer);
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            let query = TopQuery {
                n: args.n,
                range: args.range.spec()?,
                filter: args.read.filter()?,
                consistency: args.read.consistency(),
            };
            let answer = connect().await?.top(query).await?;
            out.top(&answer);
            Ok(ExitCode::SUCCESS)
        }
        Command::Filter(cmd) => {
            let client = connect().await?;
            match cmd {
                FilterCommand::Create { name, expr } => {
                    out.filters(&[client.create_filter(&name, &expr).await?]);
                }
                FilterCommand::List => out.filters(&client.list_filters().await?),
                FilterCommand::Drop { name } => {
                    let existed = client.drop_filter(&name).await?;
                    out.dropped(&name, existed);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(ClusterCommand::Status) => {
            let status = connect().await?.cluster_status().await?;
            out.status(&status);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_range_is_last_or_from_and_to() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["adclick", "count", "ad1", "--last", "5"]).is_ok());
        assert!(parse(&["adclick", "count", "ad1", "--from", "1", "--to", "2"]).is_ok());
        assert!(parse(&["adclick", "count", "ad1"]).is_err());
        assert!(parse(&["adclick", "count", "ad1", "--from", "1"]).is_err());
        assert!(
            parse(&["adclick", "count", "ad1", "--last", "5", "--from", "1", "--to", "2"]).is_err()
        );
        assert!(parse(&["adclick", "top", "-n", "0", "--last", "5"]).is_err());
    }
}
