//! `authsync-chaos`: the chaos harness's command.
//!
//! `authsync-chaos --duration 120s --seed 7` starts a three-region cluster, writes to
//! it while a seeded schedule of faults breaks it, heals it, and checks that nothing
//! acknowledged was lost, the regions agree, no email has two live accounts and no
//! personal data is in plaintext on disk or in Kafka. It exits non-zero on any
//! violation. `authsync-chaos node --config FILE` runs one region's node exactly as
//! `authsync node` does: the harness starts its nodes this way, inside their network
//! namespaces, so that one `cargo run -p authsync-chaos` builds everything it runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use authsync_chaos::cluster::BrokerKind;
use authsync_chaos::compose::ComposeOptions;
use authsync_chaos::run::{self, RunOptions, TargetOptions};
use authsync_chaos::schedule::Fault;

#[derive(Parser)]
#[command(
    name = "authsync-chaos",
    version,
    about = "Fault injection for authsync"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run one region's node (what the harness starts in each region's namespace).
    Node {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// How long the workload and the faults run: `90s`, `2m`, or seconds.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration: Duration,
    /// The schedule's seed: the same seed replays the same faults (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault types, comma-separated (default: all): kill, pause, broker-restart,
    /// broker-partition, peer-partition, latency, resets, keys-unavailable, clock-skew,
    /// replay.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault)]
    faults: Option<Vec<Fault>>,
    /// Concurrent clients, spread over the regions.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// How long the regions may take to agree once the faults stop.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    convergence_timeout: Duration,
    /// local: the broker. `embedded`: librdkafka's mock cluster in this process.
    /// `kafka`: Apache Kafka (KRaft, one process) run by `--kafka-script`, which the
    /// `broker-restart` fault kills with SIGKILL and restarts on its log dirs.
    #[arg(long, value_enum, default_value = "embedded")]
    broker: BrokerArg,
    /// local, `--broker kafka`: the script that fetches and runs Apache Kafka.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh"))]
    kafka_script: PathBuf,
    /// Keep the cluster's files here (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// `local`: a cluster the harness starts, in network namespaces behind its proxies.
    /// `compose`: the docker compose cluster, already up (`docker compose up -d`).
    #[arg(long, value_enum, default_value = "local")]
    target: TargetKind,
    /// compose: the compose file.
    #[arg(long, default_value = "docker-compose.yml")]
    compose_file: PathBuf,
    /// compose: the project name (default: compose's own, the file's directory).
    #[arg(long)]
    project: Option<String>,
    /// compose: the compose command, e.g. "docker-compose" (default: `docker compose`
    /// when the plugin answers, else docker-compose).
    #[arg(long)]
    compose_command: Option<String>,
    /// compose: the Docker CLI.
    #[arg(long, default_value = "docker")]
    docker: String,
    /// compose: the regions' HTTP addresses, in the order af-south,eu-west,us-east.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://localhost:8081,http://localhost:8082,http://localhost:8083"
    )]
    urls: Vec<String>,
    /// compose: an API key of the cluster.
    #[arg(long, env = "AUTHSYNC_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The JSON report, with every operation.
    #[arg(long, default_value = "chaos.json")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetKind {
    Local,
    Compose,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BrokerArg {
    Embedded,
    Kafka,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        _ => return Err(format!("not a duration: {text:?} (use 90s or 2m)")),
    };
    if seconds == 0 || seconds > 24 * 3600 {
        return Err("a duration from 1 s to 24 h".into());
    }
    Ok(Duration::from_secs(seconds))
}

fn parse_fault(name: &str) -> Result<Fault, String> {
    Fault::parse(name.trim()).ok_or_else(|| format!("unknown fault {name:?}"))
}

fn main() -> anyhow::Result<()> {
    authsync::node::process::keep_large_allocations_mapped();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cli.command {
        Some(Command::Node { config }) => {
            authsync::node::process::init_logging();
            runtime.block_on(authsync::node::process::run_node(&config))
        }
        None => {
            let args = cli.run;
            if !(1..=64).contains(&args.clients) {
                bail!("--clients must be 1 to 64");
            }
            let target = match args.target {
                TargetKind::Local => {
                    if !authsync_chaos::netns::available() {
                        bail!("network namespaces are not available: run as root or under `unshare --user --map-root-user`");
                    }
                    TargetOptions::Local {
                        broker: match args.broker {
                            BrokerArg::Kafka => BrokerKind::Kafka(args.kafka_script),
                            BrokerArg::Embedded => BrokerKind::Embedded,
                        },
                        dir: args.dir,
                        node_exe: std::env::current_exe().context("find this executable")?,
                    }
                }
                TargetKind::Compose => TargetOptions::Compose {
                    options: ComposeOptions {
                        file: args.compose_file,
                        project: args.project,
                        compose: args
                            .compose_command
                            .map(|c| c.split_whitespace().map(str::to_string).collect()),
                        docker: args.docker,
                        urls: args.urls,
                    },
                    api_key: args
                        .api_key
                        .context("--target compose needs --api-key (or AUTHSYNC_API_KEY)")?,
                },
            };
            let seed = args.seed.unwrap_or_else(rand::random);
            let report = runtime.block_on(run::run(RunOptions {
                duration: args.duration,
                seed,
                faults: args.faults,
                clients: args.clients,
                convergence_timeout: args.convergence_timeout,
                target,
            }))?;
            std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("write {}", args.out.display()))?;
            print!("{}", run::table(&report));
            println!("report: {}", args.out.display());
            let violations = report.verdict.violations();
            let fault_errors = run::fault_errors(&report);
            if violations > 0 || fault_errors > 0 {
                bail!(
                    "{violations} violations, {fault_errors} faults that failed or did not recover"
                );
            }
            Ok(())
        }
    }
}
