//! `strata users add | remove | list`: SCRAM users, on a running broker (`--bootstrap-server`,
//! through AlterUserScramCredentials / DescribeUserScramCredentials, KIP-554) or offline on a
//! stopped broker's data folder (`--data-dir`), which is how the first user is created before the
//! first start. Passwords are read from standard input, salted and hashed on this side: neither
//! the broker nor its files ever see one, and `list` shows mechanisms and iterations only.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use strata_broker::security::scram::{self, ScramMechanism};
use strata_broker::security::users::OfflineUsers;

use crate::admin::{AdminClient, ClientSecurity};

/// Options of `strata users`.
#[derive(Debug, Args)]
pub struct UsersArgs {
    /// Change the users of this data folder while no broker runs on it (the folder is locked
    /// meanwhile); a cluster broker imports them into the cluster's metadata when it starts.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Broker to ask, HOST:PORT [default: the `strata serve` listen address STRATA_LISTEN when
    /// set, else 127.0.0.1:9092]; not with --data-dir.
    #[arg(long, alias = "bootstrap", env = "STRATA_BOOTSTRAP", global = true)]
    bootstrap_server: Option<String>,
    /// Kafka client properties to connect with (security.protocol, sasl.mechanism,
    /// sasl.username and sasl.password or sasl.jaas.config).
    #[arg(long, global = true, value_name = "FILE")]
    command_config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a user's credential for a mechanism, or replace it (a new password).
    Add {
        /// User name (the principal is User:<name>).
        user: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long, default_value = "SCRAM-SHA-256")]
        mechanism: String,
        /// Read the password from the first line of standard input (required: a password on
        /// the command line would show in the process list and the shell's history).
        #[arg(long)]
        password_stdin: bool,
        /// PBKDF2 iterations, 4096 to 16384.
        #[arg(long, default_value_t = scram::ITERATIONS_DEFAULT)]
        iterations: u32,
    },
    /// Remove a user's credential for one mechanism, or for all of them.
    Remove {
        /// User name.
        user: String,
        /// Only this mechanism [default: every mechanism the user has].
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// Users with their mechanisms and iterations (never a secret).
    List,
}

/// One user as listed.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UserRow {
    /// User name.
    pub user: String,
    /// `(mechanism, iterations)`.
    pub credentials: Vec<(String, u32)>,
}

fn mechanism(name: &str) -> Result<ScramMechanism> {
    ScramMechanism::parse(name)
        .with_context(|| format!("--mechanism {name}: give SCRAM-SHA-256 or SCRAM-SHA-512"))
}

/// Reads the password from standard input's first line (without its line end).
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("the password read from standard input is empty");
    }
    Ok(password)
}

/// Runs `strata users`; `bootstrap` resolves the default broker.
pub fn run(args: UsersArgs, bootstrap: impl FnOnce(Option<String>) -> String) -> Result<()> {
    let output = match &args.data_dir {
        Some(dir) => offline(&args, dir)?,
        None => {
            let security = ClientSecurity::from_command_config(args.command_config.as_deref())?;
            let mut client =
                AdminClient::connect_with(&bootstrap(args.bootstrap_server.clone()), &security)?;
            online(&args, &mut client)?
        }
    };
    if !output.is_empty() {
        println!("{output}");
    }
    Ok(())
}

fn offline(args: &UsersArgs, dir: &std::path::Path) -> Result<String> {
    let users = OfflineUsers::open(dir)?;
    match &args.command {
        UsersCommand::Add {
            user,
            mechanism: name,
            password_stdin,
            iterations,
        } => {
            let m = mechanism(name)?;
            let password = password(*password_stdin)?;
            users.add(m, user, &password, *iterations)?;
            Ok(format!(
                "{m} credential of {user} stored in {}",
                dir.display()
            ))
        }
        UsersCommand::Remove {
            user,
            mechanism: name,
        } => {
            let m = name.as_deref().map(mechanism).transpose()?;
            let removed = users.remove(user, m)?;
            let names: Vec<&str> = removed.iter().map(|m| m.name()).collect();
            Ok(format!(
                "removed {} credential(s) of {user}",
                names.join(", ")
            ))
        }
        UsersCommand::List => {
            let rows: Vec<UserRow> = users
                .list()?
                .into_iter()
                .map(|(user, credentials)| UserRow {
                    user,
                    credentials: credentials
                        .into_iter()
                        .map(|(m, i)| (m.name().to_string(), i))
                        .collect(),
                })
                .collect();
            render(&rows, args.json)
        }
    }
}

fn password(password_stdin: bool) -> Result<String> {
    if !password_stdin {
        bail!("give the password on standard input with --password-stdin");
    }
    read_password()
}

fn online(args: &UsersArgs, client: &mut AdminClient) -> Result<String> {
    match &args.command {
        UsersCommand::Add {
            user,
            mechanism: name,
            password_stdin,
            iterations,
        } => {
            let m = mechanism(name)?;
            scram::check_iterations(i64::from(*iterations))?;
            let password = password(*password_stdin)?;
            let salt = scram::random_bytes(scram::SALT_BYTES);
            let salted = m.salted_password(password.as_bytes(), &salt, *iterations);
            let upsertion = ScramCredentialUpsertion::default()
                .with_name(StrBytes::from_string(user.clone()))
                .with_mechanism(m.kafka_type())
                .with_iterations(*iterations as i32)
                .with_salt(salt.into())
                .with_salted_password(salted.into());
            alter(
                client,
                AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsertion]),
            )?;
            Ok(format!("{m} credential of {user} stored"))
        }
        UsersCommand::Remove {
            user,
            mechanism: name,
        } => {
            let removed = match name {
                Some(name) => vec![mechanism(name)?],
                None => {
                    let rows = describe(client, Some(user))?;
                    rows.into_iter()
                        .flat_map(|r| r.credentials)
                        .filter_map(|(m, _)| ScramMechanism::parse(&m))
                        .collect()
                }
            };
            let deletions = removed
                .iter()
                .map(|m| {
                    ScramCredentialDeletion::default()
                        .with_name(StrBytes::from_string(user.clone()))
                        .with_mechanism(m.kafka_type())
                })
                .collect();
            alter(
                client,
                AlterUserScramCredentialsRequest::default().with_deletions(deletions),
            )?;
            let names: Vec<&str> = removed.iter().map(|m| m.name()).collect();
            Ok(format!(
                "removed {} credential(s) of {user}",
                names.join(", ")
            ))
        }
        UsersCommand::List => render(&describe(client, None)?, args.json),
    }
}

fn alter(client: &mut AdminClient, request: AlterUserScramCredentialsRequest) -> Result<()> {
    let response = client.call(&request, 0)?;
    for result in &response.results {
        if result.error_code != 0 {
            bail!(
                "user {}: {} (error {})",
                result.user.as_str(),
                result
                    .error_message
                    .as_ref()
                    .map_or("refused", |m| m.as_str()),
                result.error_code
            );
        }
    }
    Ok(())
}

/// Users and their mechanisms, from DescribeUserScramCredentials.
fn describe(client: &mut AdminClient, user: Option<&str>) -> Result<Vec<UserRow>> {
    let request = DescribeUserScramCredentialsRequest::default().with_users(
        user.map(|u| vec![UserName::default().with_name(StrBytes::from_string(u.to_string()))]),
    );
    let response = client.call(&request, 0)?;
    if response.error_code != 0 {
        bail!(
            "describing users: {} (error {})",
            response
                .error_message
                .as_ref()
                .map_or("refused", |m| m.as_str()),
            response.error_code
        );
    }
    let mut rows = Vec::new();
    for result in response.results {
        if result.error_code != 0 {
            bail!(
                "user {}: {} (error {})",
                result.user.as_str(),
                result
                    .error_message
                    .as_ref()
                    .map_or("refused", |m| m.as_str()),
                result.error_code
            );
        }
        let mut credentials: Vec<(String, u32)> = result
            .credential_infos
            .iter()
            .map(|info| {
                let name = ScramMechanism::from_kafka_type(info.mechanism).map_or_else(
                    || format!("mechanism {}", info.mechanism),
                    |m| m.name().into(),
                );
                (name, info.iterations.max(0) as u32)
            })
            .collect();
        credentials.sort();
        rows.push(UserRow {
            user: result.user.to_string(),
            credentials,
        });
    }
    rows.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(rows)
}

fn render(rows: &[UserRow], json: bool) -> Result<String> {
    if json {
        let by_user: BTreeMap<&str, BTreeMap<&str, u32>> = rows
            .iter()
            .map(|r| {
                (
                    r.user.as_str(),
                    r.credentials
                        .iter()
                        .map(|(m, i)| (m.as_str(), *i))
                        .collect(),
                )
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&by_user)?);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mechanisms: Vec<String> = r
                .credentials
                .iter()
                .map(|(m, i)| format!("{m} ({i} iterations)"))
                .collect();
            vec![r.user.clone(), mechanisms.join(", ")]
        })
        .collect();
    Ok(crate::groups::table(&["USER", "MECHANISMS"], &cells))
}
