//! Command line, configuration file and environment, layered as: file < `STRATA_*` < flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use strata_broker::BrokerConfig;

/// Default data folder.
pub const DEFAULT_DATA_DIR: &str = "./strata-data";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
/// Environment variables that name options of `strata serve` rather than broker settings.
const RESERVED_ENV: &[&str] = &[
    "STRATA_CONFIG",
    "STRATA_DATA_DIR",
    "STRATA_LISTEN",
    "STRATA_ADVERTISED",
    "STRATA_TIER_URL",
    "STRATA_LOG",
    "STRATA_BOOTSTRAP",
];

/// Strata: a Kafka-compatible streaming data lake.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Consumer groups of a running broker.
    Groups(GroupsArgs),
    /// The lake tier: offloaded files and their consistency.
    Lake(LakeArgs),
    /// A cluster as its brokers see it.
    Cluster(ClusterArgs),
    /// SCRAM users: on a running broker, or offline on a stopped broker's data folder.
    Users(crate::users::UsersArgs),
    /// ACL bindings of a running broker, with the flags of kafka-acls.
    Acl(crate::acl::AclArgs),
}

/// Options of `strata cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Broker to ask, HOST:PORT, or several separated by commas, asked in turn until one answers
    /// [default: the `strata serve` listen address STRATA_LISTEN when set, else 127.0.0.1:9092].
    #[arg(long, env = "STRATA_BOOTSTRAP", global = true)]
    bootstrap: Option<String>,
    /// Print one JSON object instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Kafka client properties to connect with (security.protocol, sasl.*, ssl.*).
    #[arg(long, global = true, value_name = "FILE")]
    command_config: Option<PathBuf>,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Brokers (live, and missing: named as replicas but not live), the active controller, the
    /// cluster id, and the under-replicated and offline partitions.
    #[command(
        after_help = "Exit status: 0 when every partition has a leader; 2 when some \
        partition has none (offline) or a topic could not be described; 1 when no broker \
        answered."
    )]
    Status,
}

/// Options of `strata lake`: the same configuration as `strata serve` (tier URL, data folder).
#[derive(Debug, Args)]
pub struct LakeArgs {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: LakeCommand,
}

#[derive(Debug, Subcommand)]
enum LakeCommand {
    /// Offloaded files with offset and time ranges, rows and sizes, and the offload lag.
    Ls {
        #[command(flatten)]
        serve: ServeArgs,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Check manifests against objects: gaps, overlaps, orphans (exit code 1 when any).
    Verify {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

/// Options of `strata groups`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Broker to ask, HOST:PORT [default: the `strata serve` listen address STRATA_LISTEN when
    /// set, else 127.0.0.1:9092].
    #[arg(long, env = "STRATA_BOOTSTRAP", global = true)]
    bootstrap: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Kafka client properties to connect with (security.protocol, sasl.*, ssl.*).
    #[arg(long, global = true, value_name = "FILE")]
    command_config: Option<PathBuf>,
    #[command(subcommand)]
    command: GroupsCommand,
}

#[derive(Debug, Subcommand)]
enum GroupsCommand {
    /// List groups with their state.
    List,
    /// Members, assignment, committed offset and lag per partition.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move an inactive group's committed offsets on one topic.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime"])))]
struct ResetArgs {
    /// Group id.
    group: String,
    /// Topic whose partitions are reset.
    #[arg(long)]
    topic: String,
    /// To each partition's log start offset.
    #[arg(long)]
    to_earliest: bool,
    /// To each partition's log end offset.
    #[arg(long)]
    to_latest: bool,
    /// To this offset (clamped to each partition's log).
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// To the first record at or after this time, e.g. 2026-11-23T08:00:00Z.
    #[arg(long, value_name = "DATETIME")]
    to_datetime: Option<String>,
    /// Show the new offsets without committing them.
    #[arg(long)]
    dry_run: bool,
}

/// Options of `strata serve`. Each also comes from the config file and a `STRATA_*` variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (keys: data_dir, listen, advertised, tier_url, and a [broker] table of
    /// Kafka broker settings such as "num.partitions").
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Folder for partitions and metadata [default: ./strata-data].
    #[arg(long, env = "STRATA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on, HOST:PORT, or Kafka's listener list NAME://HOST:PORT,… (setting
    /// `listeners`; a bare HOST:PORT is PLAINTEXT) [default: 127.0.0.1:9092].
    #[arg(long, env = "STRATA_LISTEN", value_name = "LISTENERS")]
    listen: Option<String>,
    /// HOST:PORT given to clients for the first listener [default: the listen address; see
    /// also the setting `advertised.listeners`].
    #[arg(long, env = "STRATA_ADVERTISED")]
    advertised: Option<String>,
    /// Object storage URL of the lake tier [default: file://<data-dir>/lake].
    #[arg(long, env = "STRATA_TIER_URL")]
    tier_url: Option<String>,
    /// A Kafka broker setting, NAME=VALUE (repeatable), e.g. --set num.partitions=3.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// This broker's id in a cluster (setting `node.id`).
    #[arg(long, value_name = "ID")]
    node_id: Option<i32>,
    /// Where this broker serves the metadata quorum, when it is one of its voters (setting
    /// `controller.listen`).
    #[arg(long, value_name = "HOST:PORT")]
    controller_listen: Option<String>,
    /// The metadata quorum's voters, ID@HOST:PORT,… (setting `controller.quorum.voters`); a
    /// broker without it runs alone with local metadata.
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    controller_quorum: Option<String>,
    /// This broker's rack, for rack-aware replica placement (setting `broker.rack`).
    #[arg(long, value_name = "RACK")]
    rack: Option<String>,
    /// Where to serve Prometheus metrics (`/metrics`), `/health` and `/ready` over HTTP
    /// (setting `metrics.listen`) [default: not served].
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertised: Option<String>,
    tier_url: Option<String>,
    #[serde(default)]
    broker: BTreeMap<String, toml::Value>,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(args).map(|()| ExitCode::SUCCESS),
        Command::Groups(args) => groups(args).map(|()| ExitCode::SUCCESS),
        Command::Lake(args) => lake(args).map(|()| ExitCode::SUCCESS),
        Command::Cluster(args) => cluster(args),
        Command::Users(args) => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            crate::users::run(args, |given| bootstrap(given, &env)).map(|()| ExitCode::SUCCESS)
        }
        Command::Acl(args) => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            crate::acl::run(args, |given| bootstrap(given, &env)).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = chain(&e);
            tracing::error!("{message}");
            eprintln!("strata: {message}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, leaving out a cause whose text its error already
/// ends with (errors that print their source as well as returning it).
fn chain(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.ends_with(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn init_logging() {
    let filter = std::env::var("STRATA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Layers the config file, the environment and the flags into a broker config.
pub fn broker_config(args: &ServeArgs, env: &BTreeMap<String, String>) -> Result<BrokerConfig> {
    let file = match &args.config {
        Some(path) => read_config_file(path)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    // A bare address is the one PLAINTEXT listener, as before listener lists; a list goes to
    // the `listeners` setting (checked with the other listener settings by BrokerConfig::new).
    let mut listeners = None;
    let listen = match args.listen.clone().or(file.listen) {
        Some(listen) => match listen.trim().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                listeners = Some(listen);
                DEFAULT_LISTEN.parse().expect("valid default")
            }
        },
        None => DEFAULT_LISTEN.parse().expect("valid default"),
    };
    let mut settings = BTreeMap::new();
    for (name, value) in file.broker {
        let value = match value {
            toml::Value::String(s) => s,
            other => other.to_string(),
        };
        settings.insert(name, value);
    }
    for (key, value) in env {
        if let Some(rest) = key.strip_prefix("STRATA_")
            && !RESERVED_ENV.contains(&key.as_str())
            && !key.starts_with("STRATA_TEST_")
        {
            settings.insert(rest.to_ascii_lowercase().replace('_', "."), value.clone());
        }
    }
    for pair in &args.settings {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--set {pair:?}: expected NAME=VALUE");
        };
        settings.insert(name.trim().to_string(), value.trim().to_string());
    }
    let flags = [
        ("listeners", listeners),
        ("node.id", args.node_id.map(|id| id.to_string())),
        ("controller.listen", args.controller_listen.clone()),
        ("controller.quorum.voters", args.controller_quorum.clone()),
        ("broker.rack", args.rack.clone()),
        ("metrics.listen", args.metrics_listen.clone()),
    ];
    for (name, value) in flags {
        if let Some(value) = value {
            settings.insert(name.to_string(), value);
        }
    }
    BrokerConfig::new(
        data_dir,
        listen,
        args.advertised.clone().or(file.advertised),
        args.tier_url.clone().or(file.tier_url),
        settings,
    )
    .context("invalid configuration")
}

fn read_config_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

fn serve(args: ServeArgs) -> Result<()> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut config = broker_config(&args, &env)?;
    config.tier_env = env
        .iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strata")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let tier_url = config.tier_url.clone();
        let broker = strata_broker::start(config)
            .await
            .context("starting the broker")?;
        tracing::info!(
            listen = %broker.local_addr(),
            data_dir = %data_dir.display(),
            tier_url,
            "strata listening on {} with data in {}",
            broker.local_addr(),
            data_dir.display()
        );
        let token = broker.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            token.cancel();
        });
        broker.wait().await;
        Ok(())
    })
}

fn lake(args: LakeArgs) -> Result<()> {
    use crate::groups::table;
    use crate::lake::time_text;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let serve = match &args.command {
        LakeCommand::Ls { serve, .. } | LakeCommand::Verify { serve } => serve,
    };
    let config = broker_config(serve, &env)?;
    let aws: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect();
    let lake = strata_lake::Lake::new(strata_lake::store::open(&config.tier_url, &aws)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        LakeCommand::Ls { topic, .. } => {
            let listing =
                runtime.block_on(crate::lake::ls(&lake, &config.data_dir, topic.as_deref()))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(());
            }
            let mut rows = Vec::new();
            for p in &listing {
                for f in &p.files {
                    rows.push(vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        f.path.rsplit('/').next().unwrap_or_default().to_string(),
                        f.base_offset.to_string(),
                        f.last_offset.to_string(),
                        time_text(f.min_timestamp_ms),
                        time_text(f.max_timestamp_ms),
                        f.rows.to_string(),
                        f.size_bytes.to_string(),
                    ]);
                }
            }
            println!(
                "{}",
                table(
                    &[
                        "TOPIC",
                        "PARTITION",
                        "FILE",
                        "FIRST-OFFSET",
                        "LAST-OFFSET",
                        "MIN-TIME",
                        "MAX-TIME",
                        "ROWS",
                        "BYTES"
                    ],
                    &rows
                )
            );
            // Every partition carries the same reason when the lake could not be read.
            if let Some(e) = listing.iter().find_map(|p| p.lake_error.as_ref()) {
                println!("the lake could not be read ({e}): local lag and offload errors only");
            }
            for p in listing.iter().filter(|p| p.lag_segments > 0) {
                println!(
                    "offload lag {}-{}: {} segment(s), {} bytes waiting",
                    p.topic, p.partition, p.lag_segments, p.lag_bytes
                );
            }
            for p in &listing {
                if let Some(e) = &p.offload_error {
                    println!(
                        "offload of {}-{} failing since {} ({} attempt(s), next at {}): {}",
                        p.topic,
                        p.partition,
                        crate::lake::time_text(e.since_ms),
                        e.failures,
                        crate::lake::time_text(e.retry_at_ms),
                        e.error
                    );
                }
            }
            Ok(())
        }
        LakeCommand::Verify { .. } => {
            let checks = runtime.block_on(crate::lake::verify(&lake))?;
            let dirty: Vec<_> = checks.iter().filter(|c| !c.report.is_clean()).collect();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for c in &dirty {
                    let r = &c.report;
                    println!(
                        "{}-{}: gaps {:?}, overlaps {:?}, orphans {:?}, missing {:?}, \
                         sealed files after fresh pieces {:?}",
                        c.topic, c.partition, r.gaps, r.overlaps, r.orphans, r.missing, r.misplaced
                    );
                }
                println!(
                    "{} partition(s) checked, {} with problems",
                    checks.len(),
                    dirty.len()
                );
            }
            if dirty.is_empty() {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
    }
}

/// The broker `strata groups` and `strata cluster` ask: `--bootstrap` (or `STRATA_BOOTSTRAP`),
/// else the address a `strata serve` in the same environment listens on (`STRATA_LISTEN`, an
/// unspecified address reached on loopback), else the default listen address.
fn bootstrap(given: Option<String>, env: &BTreeMap<String, String>) -> String {
    if let Some(given) = given {
        return given;
    }
    let Some(listen) = env.get("STRATA_LISTEN") else {
        return DEFAULT_LISTEN.to_string();
    };
    // A listener list: its first PLAINTEXT listener's address (the commands speak plaintext),
    // else its first listener's.
    let entries: Vec<(&str, &str)> = listen
        .split(',')
        .map(|e| {
            e.trim()
                .split_once("://")
                .unwrap_or(("PLAINTEXT", e.trim()))
        })
        .collect();
    let listen = &entries
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("PLAINTEXT"))
        .or(entries.first())
        .map_or_else(|| listen.clone(), |(_, address)| address.to_string());
    match listen.parse::<SocketAddr>() {
        Ok(mut addr) if addr.ip().is_unspecified() => {
            let loopback = match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            };
            addr.set_ip(loopback);
            addr.to_string()
        }
        // Not an address `strata serve` would take; the connection error will name it.
        _ => listen.clone(),
    }
}

fn groups(args: GroupsArgs) -> Result<()> {
    use crate::groups::{or_dash, table};
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let security =
        crate::admin::ClientSecurity::from_command_config(args.command_config.as_deref())?;
    let mut client =
        crate::admin::AdminClient::connect_with(&bootstrap(args.bootstrap, &env), &security)?;
    let output = match args.command {
        GroupsCommand::List => {
            let rows = crate::groups::list(&mut client)?;
            if args.json {
                serde_json::to_string_pretty(&rows)?
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| vec![r.group.clone(), r.state.clone(), r.protocol_type.clone()])
                    .collect();
                table(&["GROUP", "STATE", "PROTOCOL-TYPE"], &cells)
            }
        }
        GroupsCommand::Describe { group } => {
            let detail = crate::groups::describe(&mut client, &group)?;
            if args.json {
                serde_json::to_string_pretty(&detail)?
            } else {
                let cells: Vec<Vec<String>> = detail
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            or_dash(p.committed_offset),
                            p.log_end_offset.to_string(),
                            or_dash(p.lag),
                            or_dash(p.member_id.clone()),
                            or_dash(p.client_id.clone()),
                            or_dash(p.host.clone()),
                        ]
                    })
                    .collect();
                format!(
                    "group {} is {} ({} member(s), assignor {})\n\n{}",
                    detail.group,
                    detail.state,
                    detail.members,
                    if detail.protocol.is_empty() {
                        "-"
                    } else {
                        &detail.protocol
                    },
                    table(
                        &[
                            "TOPIC",
                            "PARTITION",
                            "CURRENT-OFFSET",
                            "LOG-END-OFFSET",
                            "LAG",
                            "CONSUMER-ID",
                            "CLIENT-ID",
                            "HOST"
                        ],
                        &cells
                    )
                )
            }
        }
        GroupsCommand::ResetOffsets(reset) => {
            let to = if reset.to_earliest {
                crate::groups::ResetTo::Earliest
            } else if reset.to_latest {
                crate::groups::ResetTo::Latest
            } else if let Some(offset) = reset.to_offset {
                crate::groups::ResetTo::Offset(offset)
            } else {
                let text = reset.to_datetime.as_deref().unwrap_or_default();
                let time = humantime::parse_rfc3339_weak(text)
                    .with_context(|| format!("--to-datetime {text:?}"))?;
                let ms = time
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("a time before 1970")?
                    .as_millis();
                crate::groups::ResetTo::Timestamp(ms as i64)
            };
            let rows = crate::groups::reset_offsets(
                &mut client,
                &reset.group,
                &reset.topic,
                to,
                reset.dry_run,
            )?;
            if args.json {
                serde_json::to_string_pretty(&rows)?
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.topic.clone(),
                            r.partition.to_string(),
                            or_dash(r.previous_offset),
                            r.new_offset.to_string(),
                        ]
                    })
                    .collect();
                let verb = if reset.dry_run {
                    "would reset (dry run)"
                } else {
                    "reset"
                };
                format!(
                    "{verb} group {}\n\n{}",
                    reset.group,
                    table(
                        &["TOPIC", "PARTITION", "PREVIOUS-OFFSET", "NEW-OFFSET"],
                        &cells
                    )
                )
            }
        }
    };
    println!("{output}");
    Ok(())
}

/// Exit status of `strata cluster status` when some partition has no leader.
const EXIT_OFFLINE: u8 = 2;

fn cluster(args: ClusterArgs) -> Result<ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let bootstrap = bootstrap(args.bootstrap, &env);
    match args.command {
        ClusterCommand::Status => {
            let security =
                crate::admin::ClientSecurity::from_command_config(args.command_config.as_deref())?;
            let status = crate::cluster::status_with(&bootstrap, &security)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{}", status.render());
            }
            Ok(if status.every_partition_led() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_OFFLINE)
            })
        }
    }
}

async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let inner = anyhow::Error::new(strata_broker::Error::Io {
            what: "binding PLAINTEXT://127.0.0.1:9092".into(),
            source: io,
        });
        let e = inner.context("starting the broker");
        assert_eq!(
            chain(&e),
            "starting the broker: I/O error on binding PLAINTEXT://127.0.0.1:9092: Address \
             already in use"
        );
        let plain = anyhow::anyhow!("no such file").context("reading x");
        assert_eq!(chain(&plain), "reading x: no such file");
    }

    fn args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["strata", "serve"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(a) => a,
            _ => {
                unreachable!("parsed serve")
            }
        }
    }

    #[test]
    fn defaults() {
        let config = broker_config(&args(&[]), &BTreeMap::new()).unwrap();
        let data_dir = std::env::current_dir().unwrap().join("strata-data");
        assert_eq!(config.data_dir, data_dir);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(
            config.tier_url,
            format!("file://{}", data_dir.join("lake").display())
        );
    }

    #[test]
    fn relative_folders_are_the_working_directory_s() {
        let config = broker_config(&args(&["--data-dir", "data/../d"]), &BTreeMap::new()).unwrap();
        assert!(config.data_dir.is_absolute());
        assert_eq!(
            config.data_dir,
            std::env::current_dir().unwrap().join("data/../d")
        );
        let config = broker_config(&args(&["--tier-url", "file:lake"]), &BTreeMap::new()).unwrap();
        assert_eq!(
            config.tier_url, "file:lake",
            "resolved when the lake is opened"
        );
    }

    #[test]
    fn groups_ask_the_configured_broker() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(bootstrap(None, &env(&[])), DEFAULT_LISTEN);
        let listen = env(&[("STRATA_LISTEN", "127.0.0.1:4000")]);
        assert_eq!(bootstrap(None, &listen), "127.0.0.1:4000");
        assert_eq!(
            bootstrap(Some("10.0.0.1:9092".into()), &listen),
            "10.0.0.1:9092"
        );
        let all = env(&[("STRATA_LISTEN", "0.0.0.0:4000")]);
        assert_eq!(bootstrap(None, &all), "127.0.0.1:4000");
        let all6 = env(&[("STRATA_LISTEN", "[::]:4000")]);
        assert_eq!(bootstrap(None, &all6), "[::1]:4000");
        let unparsable = env(&[("STRATA_LISTEN", "broker:4000")]);
        assert_eq!(bootstrap(None, &unparsable), "broker:4000");
    }

    #[test]
    fn cluster_status_takes_a_bootstrap_list_and_json() {
        let cli = Cli::try_parse_from([
            "strata",
            "cluster",
            "status",
            "--json",
            "--bootstrap",
            "10.0.0.1:9092,10.0.0.2:9092",
        ])
        .unwrap();
        let Command::Cluster(args) = cli.command else {
            panic!("parsed cluster");
        };
        assert!(args.json);
        assert_eq!(
            args.bootstrap.as_deref(),
            Some("10.0.0.1:9092,10.0.0.2:9092")
        );
        assert!(matches!(args.command, ClusterCommand::Status));
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strata.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nlisten = \"127.0.0.1:1000\"\n[broker]\n\"num.partitions\" = 2\n\"log.segment.bytes\" = 5000\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        let env = BTreeMap::from([("STRATA_NUM_PARTITIONS".to_string(), "4".to_string())]);
        let config = broker_config(&args(&["--config", file_arg]), &env).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from/file"));
        assert_eq!(config.num_partitions(), 4, "environment beats file");
        assert_eq!(config.setting("log.segment.bytes"), "5000");
        let config = broker_config(
            &args(&[
                "--config",
                file_arg,
                "--listen",
                "127.0.0.1:2000",
                "--set",
                "num.partitions=6",
            ]),
            &env,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 2000);
        assert_eq!(config.num_partitions(), 6, "flags beat environment");
    }

    #[test]
    fn listen_takes_a_listener_list_and_checks_it() {
        let config = broker_config(
            &args(&["--listen", "SSL://0.0.0.0:9093,PLAINTEXT://127.0.0.1:9092"]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            config.setting("listeners"),
            "SSL://0.0.0.0:9093,PLAINTEXT://127.0.0.1:9092"
        );
        let bare = broker_config(&args(&["--listen", "127.0.0.1:2000"]), &BTreeMap::new()).unwrap();
        assert_eq!(bare.listen.port(), 2000);
        assert!(!bare.is_set("listeners"), "a bare address stays --listen");
        let err = format!(
            "{:#}",
            broker_config(&args(&["--listen", "INTERNAL://h:1"]), &BTreeMap::new()).unwrap_err()
        );
        assert!(err.contains("listener.security.protocol.map"), "{err}");
        let listen = BTreeMap::from([(
            "STRATA_LISTEN".to_string(),
            "SASL_SSL://0.0.0.0:9093,PLAINTEXT://127.0.0.1:9092".to_string(),
        )]);
        assert_eq!(bootstrap(None, &listen), "127.0.0.1:9092");
    }

    #[test]
    fn unknown_settings_are_errors() {
        let env = BTreeMap::from([("STRATA_NUM_PARTITONS".to_string(), "4".to_string())]);
        let err = format!("{:#}", broker_config(&args(&[]), &env).unwrap_err());
        assert!(err.contains("num.partitons"), "{err}");
        assert!(broker_config(&args(&["--set", "nonsense"]), &BTreeMap::new()).is_err());
    }
}
