//! `strata acl list | add | remove`: a running broker's ACL bindings, over Kafka's DescribeAcls,
//! CreateAcls and DeleteAcls, with the flags of Kafka's `kafka-acls.sh`.
//!
//! `add` writes one binding per principal × host × operation × resource (`--producer` and
//! `--consumer` choose the operations per resource, as kafka-acls does); `remove` deletes those
//! same bindings, or, given no principal, every binding on the named resources (as
//! `kafka-acls.sh --remove` does); `list` shows the bindings on the named resources (every
//! binding when none is named), optionally of one principal.

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use strata_broker::security::acl::{
    AclBinding, AclBindingFilter, AclOperation, AclPermission, CLUSTER_NAME, PatternType,
    ResourceType, WILDCARD,
};

use crate::admin::{AdminClient, ClientSecurity};

/// The version of DescribeAcls, CreateAcls and DeleteAcls spoken: v1 is the first with
/// pattern types (KIP-290), and every broker since Kafka 2.0 has it.
const ACL_API_VERSION: i16 = 1;

/// Options of `strata acl`.
#[derive(Debug, Args)]
pub struct AclArgs {
    /// Broker to ask, HOST:PORT [default: the `strata serve` listen address STRATA_LISTEN when
    /// set, else 127.0.0.1:9092].
    #[arg(
        long,
        visible_alias = "bootstrap-server",
        env = "STRATA_BOOTSTRAP",
        global = true
    )]
    pub bootstrap: Option<String>,
    /// Kafka client properties to connect with (security.protocol, sasl.mechanism,
    /// sasl.username and sasl.password or sasl.jaas.config), as kafka-acls takes them.
    #[arg(long, global = true, value_name = "FILE")]
    pub command_config: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    command: AclCommand,
}

#[derive(Debug, Subcommand)]
enum AclCommand {
    /// The bindings on the named resources (every binding when none is named).
    List(ListArgs),
    /// Adds bindings: each principal × host × operation × resource.
    Add(ChangeArgs),
    /// Removes the bindings `add` would add with the same flags; with no principal, every
    /// binding on the named resources.
    Remove(ChangeArgs),
}

/// The resources a command names.
#[derive(Debug, Args, Default)]
struct ResourceArgs {
    /// A topic (repeatable; `*` is every topic).
    #[arg(long)]
    topic: Vec<String>,
    /// A consumer group (repeatable; `*` is every group).
    #[arg(long)]
    group: Vec<String>,
    /// The cluster (`kafka-cluster`).
    #[arg(long)]
    cluster: bool,
    /// A transactional id (repeatable; `*` is every one).
    #[arg(long)]
    transactional_id: Vec<String>,
    /// How names match: literal or prefixed for bindings; also match (every binding that
    /// applies to the named resource) and any for `list` and `remove`
    /// [default: literal; any for list].
    #[arg(long)]
    resource_pattern_type: Option<String>,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    resources: ResourceArgs,
    /// Only the bindings of this principal (`User:alice`).
    #[arg(long)]
    principal: Option<String>,
}

#[derive(Debug, Args, Default)]
struct ChangeArgs {
    #[command(flatten)]
    resources: ResourceArgs,
    /// A principal allowed (`User:alice`, `User:*`; repeatable).
    #[arg(long)]
    allow_principal: Vec<String>,
    /// A principal denied (repeatable).
    #[arg(long)]
    deny_principal: Vec<String>,
    /// A host the allowed principals may come from, an IP address (repeatable) [default: *].
    #[arg(long)]
    allow_host: Vec<String>,
    /// A host the denied principals are denied from (repeatable) [default: *].
    #[arg(long)]
    deny_host: Vec<String>,
    /// An operation: Read, Write, Create, Delete, Alter, Describe, ClusterAction,
    /// DescribeConfigs, AlterConfigs, IdempotentWrite, All (repeatable) [default: All].
    #[arg(long)]
    operation: Vec<String>,
    /// kafka-acls' producer shorthand: WRITE, DESCRIBE and CREATE on the topics, WRITE and
    /// DESCRIBE on the transactional ids.
    #[arg(long, conflicts_with = "operation")]
    producer: bool,
    /// With --producer: IDEMPOTENT_WRITE on the cluster too.
    #[arg(long, requires = "producer")]
    idempotent: bool,
    /// kafka-acls' consumer shorthand: READ and DESCRIBE on the topics, READ on the groups.
    #[arg(long, conflicts_with = "operation")]
    consumer: bool,
}

/// One binding as `strata acl list` prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AclRow {
    /// TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID, …
    pub resource_type: String,
    /// The name, prefix or `*`.
    pub resource_name: String,
    /// LITERAL or PREFIXED.
    pub pattern_type: String,
    /// `User:alice`.
    pub principal: String,
    /// `*` or an IP address.
    pub host: String,
    /// READ, WRITE, …
    pub operation: String,
    /// ALLOW or DENY.
    pub permission_type: String,
}

impl From<&AclBinding> for AclRow {
    fn from(b: &AclBinding) -> Self {
        Self {
            resource_type: b.resource_type.to_string(),
            resource_name: b.resource_name.clone(),
            pattern_type: b.pattern_type.to_string(),
            principal: b.principal.clone(),
            host: b.host.clone(),
            operation: b.operation.to_string(),
            permission_type: b.permission_type.to_string(),
        }
    }
}

/// Runs `strata acl`; `bootstrap` resolves the broker to ask (`--bootstrap` or the default).
pub fn run(args: AclArgs, bootstrap: impl FnOnce(Option<String>) -> String) -> Result<()> {
    let security = match &args.command_config {
        Some(path) => ClientSecurity::from_file(path)?,
        None => ClientSecurity::default(),
    };
    let mut client = AdminClient::connect_with(&bootstrap(args.bootstrap.clone()), &security)?;
    let (verb, bindings) = match args.command {
        AclCommand::List(list) => {
            let filters = list_filters(&list)?;
            let mut found = Vec::new();
            for filter in &filters {
                found.extend(describe(&mut client, filter)?);
            }
            found.sort();
            found.dedup();
            ("", found)
        }
        AclCommand::Add(add) => {
            let bindings = bindings(&add)?;
            create(&mut client, &bindings)?;
            ("added ", bindings)
        }
        AclCommand::Remove(remove) => {
            let filters = remove_filters(&remove)?;
            ("removed ", delete(&mut client, &filters)?)
        }
    };
    let rows: Vec<AclRow> = bindings.iter().map(AclRow::from).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{verb}{} binding(s)\n\n{}", rows.len(), render(&rows));
    }
    Ok(())
}

fn render(rows: &[AclRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.resource_type.clone(),
                r.resource_name.clone(),
                r.pattern_type.clone(),
                r.principal.clone(),
                r.host.clone(),
                r.operation.clone(),
                r.permission_type.clone(),
            ]
        })
        .collect();
    crate::groups::table(
        &[
            "RESOURCE-TYPE",
            "NAME",
            "PATTERN",
            "PRINCIPAL",
            "HOST",
            "OPERATION",
            "PERMISSION",
        ],
        &cells,
    )
}

/// `(type, name)` of every resource named.
fn resources(args: &ResourceArgs) -> Vec<(ResourceType, String)> {
    let named = |t: ResourceType, names: &[String]| {
        names
            .iter()
            .map(move |n| (t, n.clone()))
            .collect::<Vec<_>>()
    };
    let mut all = named(ResourceType::Topic, &args.topic);
    all.extend(named(ResourceType::Group, &args.group));
    all.extend(named(ResourceType::TransactionalId, &args.transactional_id));
    if args.cluster {
        all.push((ResourceType::Cluster, CLUSTER_NAME.to_string()));
    }
    all
}

fn pattern_type(args: &ResourceArgs, default: PatternType) -> Result<PatternType> {
    match &args.resource_pattern_type {
        None => Ok(default),
        Some(text) => PatternType::parse(text).with_context(|| {
            format!("--resource-pattern-type {text:?}: literal, prefixed, match or any")
        }),
    }
}

fn operations(args: &ChangeArgs) -> Result<Vec<AclOperation>> {
    if args.operation.is_empty() {
        return Ok(vec![AclOperation::All]);
    }
    args.operation
        .iter()
        .map(|text| match AclOperation::parse(text) {
            Some(AclOperation::Any) | None => bail!(
                "--operation {text:?}: one of Read, Write, Create, Delete, Alter, Describe, \
                 ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite, All"
            ),
            Some(op) => Ok(op),
        })
        .collect()
}

/// The bindings `add` writes (and `remove` with principals deletes), each validated.
fn bindings(args: &ChangeArgs) -> Result<Vec<AclBinding>> {
    let pattern = pattern_type(&args.resources, PatternType::Literal)?;
    if !matches!(pattern, PatternType::Literal | PatternType::Prefixed) {
        bail!("bindings are literal or prefixed, not {pattern}");
    }
    let resources = resources(&args.resources);
    if resources.is_empty() {
        bail!("name a resource: --topic, --group, --cluster or --transactional-id");
    }
    if (args.producer || args.consumer) && args.resources.topic.is_empty() {
        bail!("--producer and --consumer need a --topic");
    }
    if args.consumer && args.resources.group.is_empty() {
        bail!("--consumer needs a --group");
    }
    if args.allow_principal.is_empty() && args.deny_principal.is_empty() {
        bail!("name a principal: --allow-principal or --deny-principal");
    }
    let hosts = |given: &[String]| {
        if given.is_empty() {
            vec![WILDCARD.to_string()]
        } else {
            given.to_vec()
        }
    };
    let who = [
        (
            AclPermission::Allow,
            &args.allow_principal,
            hosts(&args.allow_host),
        ),
        (
            AclPermission::Deny,
            &args.deny_principal,
            hosts(&args.deny_host),
        ),
    ];
    let operations = operations(args)?;
    let mut resources = resources;
    if args.idempotent && !resources.iter().any(|(t, _)| *t == ResourceType::Cluster) {
        resources.push((ResourceType::Cluster, CLUSTER_NAME.to_string()));
    }
    let mut out = Vec::new();
    for (resource_type, name) in &resources {
        let operations = match shorthand(args, *resource_type) {
            Some(operations) => operations,
            None => operations.clone(),
        };
        for (permission, principals, hosts) in &who {
            for principal in principals.iter() {
                for host in hosts {
                    for &operation in &operations {
                        let binding = AclBinding {
                            resource_type: *resource_type,
                            resource_name: name.clone(),
                            pattern_type: pattern,
                            principal: principal.clone(),
                            host: host.clone(),
                            operation,
                            permission_type: *permission,
                        };
                        binding.validate().map_err(anyhow::Error::msg)?;
                        out.push(binding);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The operations `--producer` / `--consumer` give on a resource of `resource_type` (none on the
/// others), or `None` without those flags.
fn shorthand(args: &ChangeArgs, resource_type: ResourceType) -> Option<Vec<AclOperation>> {
    use AclOperation::*;
    if !args.producer && !args.consumer {
        return None;
    }
    let mut operations = Vec::new();
    if args.producer {
        operations.extend_from_slice(match resource_type {
            ResourceType::Topic => &[Write, Describe, Create][..],
            ResourceType::TransactionalId => &[Write, Describe],
            ResourceType::Cluster if args.idempotent => &[IdempotentWrite],
            _ => &[],
        });
    }
    if args.consumer {
        operations.extend_from_slice(match resource_type {
            ResourceType::Topic => &[Read, Describe][..],
            ResourceType::Group => &[Read],
            _ => &[],
        });
    }
    operations.sort();
    operations.dedup();
    Some(operations)
}

fn exact(binding: &AclBinding) -> AclBindingFilter {
    AclBindingFilter {
        resource_type: binding.resource_type,
        resource_name: Some(binding.resource_name.clone()),
        pattern_type: binding.pattern_type,
        principal: Some(binding.principal.clone()),
        host: Some(binding.host.clone()),
        operation: binding.operation,
        permission_type: binding.permission_type,
    }
}

fn resource_filters(
    args: &ResourceArgs,
    pattern: PatternType,
    principal: Option<&str>,
) -> Vec<AclBindingFilter> {
    let with = |resource_type, resource_name| AclBindingFilter {
        resource_type,
        resource_name,
        pattern_type: pattern,
        principal: principal.map(str::to_string),
        ..AclBindingFilter::any()
    };
    let named = resources(args);
    if named.is_empty() {
        return vec![with(ResourceType::Any, None)];
    }
    named
        .into_iter()
        .map(|(t, name)| with(t, Some(name)))
        .collect()
}

fn list_filters(args: &ListArgs) -> Result<Vec<AclBindingFilter>> {
    let pattern = pattern_type(&args.resources, PatternType::Any)?;
    if let Some(p) = &args.principal
        && strata_broker::session::Principal::parse(p).is_none()
    {
        bail!("--principal {p:?} is not Type:name (User:alice)");
    }
    Ok(resource_filters(
        &args.resources,
        pattern,
        args.principal.as_deref(),
    ))
}

fn remove_filters(args: &ChangeArgs) -> Result<Vec<AclBindingFilter>> {
    if !args.allow_principal.is_empty() || !args.deny_principal.is_empty() {
        return Ok(bindings(args)?.iter().map(exact).collect());
    }
    if resources(&args.resources).is_empty() {
        bail!(
            "name a resource to remove bindings from: --topic, --group, --cluster or --transactional-id"
        );
    }
    let pattern = pattern_type(&args.resources, PatternType::Literal)?;
    Ok(resource_filters(&args.resources, pattern, None))
}

fn check(code: i16, message: Option<&StrBytes>, what: &str) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(e) => match message {
            Some(m) if !m.is_empty() => bail!("{what}: {e} (Kafka error {code}): {}", m.as_str()),
            _ => bail!("{what}: {e} (Kafka error {code})"),
        },
    }
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The bindings matching `filter` (DescribeAcls).
pub fn describe(client: &mut AdminClient, filter: &AclBindingFilter) -> Result<Vec<AclBinding>> {
    let request = DescribeAclsRequest::default()
        .with_resource_type_filter(filter.resource_type.code())
        .with_resource_name_filter(filter.resource_name.as_deref().map(text))
        .with_pattern_type_filter(filter.pattern_type.code())
        .with_principal_filter(filter.principal.as_deref().map(text))
        .with_host_filter(filter.host.as_deref().map(text))
        .with_operation(filter.operation.code())
        .with_permission_type(filter.permission_type.code());
    let response = client.call(&request, ACL_API_VERSION)?;
    check(
        response.error_code,
        response.error_message.as_ref(),
        "listing ACLs",
    )?;
    let mut out = Vec::new();
    for resource in response.resources {
        for acl in resource.acls {
            out.push(decode(
                resource.resource_type,
                &resource.resource_name,
                resource.pattern_type,
                &acl.principal,
                &acl.host,
                acl.operation,
                acl.permission_type,
            )?);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn decode(
    resource_type: i8,
    name: &str,
    pattern_type: i8,
    principal: &str,
    host: &str,
    operation: i8,
    permission_type: i8,
) -> Result<AclBinding> {
    let unknown =
        |what: &str, code: i8| anyhow::anyhow!("the broker sent an unknown {what} {code}");
    Ok(AclBinding {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| unknown("resource type", resource_type))?,
        resource_name: name.to_string(),
        pattern_type: PatternType::from_code(pattern_type)
            .ok_or_else(|| unknown("pattern type", pattern_type))?,
        principal: principal.to_string(),
        host: host.to_string(),
        operation: AclOperation::from_code(operation)
            .ok_or_else(|| unknown("operation", operation))?,
        permission_type: AclPermission::from_code(permission_type)
            .ok_or_else(|| unknown("permission type", permission_type))?,
    })
}

/// Adds `bindings` (CreateAcls), failing with the first binding the broker refused.
pub fn create(client: &mut AdminClient, bindings: &[AclBinding]) -> Result<()> {
    let creations = bindings
        .iter()
        .map(|b| {
            AclCreation::default()
                .with_resource_type(b.resource_type.code())
                .with_resource_name(text(&b.resource_name))
                .with_resource_pattern_type(b.pattern_type.code())
                .with_principal(text(&b.principal))
                .with_host(text(&b.host))
                .with_operation(b.operation.code())
                .with_permission_type(b.permission_type.code())
        })
        .collect();
    let response = client.call(
        &CreateAclsRequest::default().with_creations(creations),
        ACL_API_VERSION,
    )?;
    if response.results.len() != bindings.len() {
        bail!(
            "the broker answered {} results for {} bindings",
            response.results.len(),
            bindings.len()
        );
    }
    for (binding, result) in bindings.iter().zip(&response.results) {
        check(
            result.error_code,
            result.error_message.as_ref(),
            &format!("adding {binding}"),
        )?;
    }
    Ok(())
}

/// Removes the bindings matching `filters` (DeleteAcls), returning those removed.
pub fn delete(client: &mut AdminClient, filters: &[AclBindingFilter]) -> Result<Vec<AclBinding>> {
    let wire = filters
        .iter()
        .map(|f| {
            DeleteAclsFilter::default()
                .with_resource_type_filter(f.resource_type.code())
                .with_resource_name_filter(f.resource_name.as_deref().map(text))
                .with_pattern_type_filter(f.pattern_type.code())
                .with_principal_filter(f.principal.as_deref().map(text))
                .with_host_filter(f.host.as_deref().map(text))
                .with_operation(f.operation.code())
                .with_permission_type(f.permission_type.code())
        })
        .collect();
    let response = client.call(
        &DeleteAclsRequest::default().with_filters(wire),
        ACL_API_VERSION,
    )?;
    let mut removed = Vec::new();
    for result in response.filter_results {
        check(
            result.error_code,
            result.error_message.as_ref(),
            "removing ACLs",
        )?;
        for acl in result.matching_acls {
            check(
                acl.error_code,
                acl.error_message.as_ref(),
                "removing an ACL",
            )?;
            removed.push(decode(
                acl.resource_type,
                &acl.resource_name,
                acl.pattern_type,
                &acl.principal,
                &acl.host,
                acl.operation,
                acl.permission_type,
            )?);
        }
    }
    removed.sort();
    removed.dedup();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(topic: &[&str], allow: &[&str], deny: &[&str], ops: &[&str]) -> ChangeArgs {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        ChangeArgs {
            resources: ResourceArgs {
                topic: strings(topic),
                ..ResourceArgs::default()
            },
            allow_principal: strings(allow),
            deny_principal: strings(deny),
            operation: strings(ops),
            ..ChangeArgs::default()
        }
    }

    #[test]
    fn add_writes_each_principal_host_operation_and_resource() {
        let mut args = change(
            &["a", "b"],
            &["User:alice"],
            &["User:bob"],
            &["Read", "describe"],
        );
        args.deny_host = vec!["10.0.0.1".into()];
        let written = bindings(&args).unwrap();
        assert_eq!(written.len(), 8);
        let denied: Vec<_> = written
            .iter()
            .filter(|b| b.permission_type == AclPermission::Deny)
            .collect();
        assert_eq!(denied.len(), 4);
        assert!(denied.iter().all(|b| b.host == "10.0.0.1"));
        assert!(
            written
                .iter()
                .filter(|b| b.permission_type == AclPermission::Allow)
                .all(|b| b.host == "*")
        );
        assert_eq!(
            bindings(&change(&["a"], &["User:alice"], &[], &[])).unwrap()[0].operation,
            AclOperation::All,
            "kafka-acls' default operation"
        );
    }

    #[test]
    fn producer_and_consumer_shorthands_are_kafka_acls_ones() {
        let ops = |bindings: &[AclBinding], t: ResourceType| {
            let mut ops: Vec<String> = bindings
                .iter()
                .filter(|b| b.resource_type == t)
                .map(|b| b.operation.to_string())
                .collect();
            ops.sort();
            ops
        };
        let mut args = change(&["t"], &["User:p"], &[], &[]);
        args.producer = true;
        args.idempotent = true;
        args.resources.transactional_id = vec!["tx".into()];
        let written = bindings(&args).unwrap();
        assert_eq!(
            ops(&written, ResourceType::Topic),
            ["CREATE", "DESCRIBE", "WRITE"]
        );
        assert_eq!(
            ops(&written, ResourceType::TransactionalId),
            ["DESCRIBE", "WRITE"]
        );
        assert_eq!(ops(&written, ResourceType::Cluster), ["IDEMPOTENT_WRITE"]);
        let mut args = change(&["t"], &["User:c"], &[], &[]);
        args.consumer = true;
        assert!(bindings(&args).unwrap_err().to_string().contains("--group"));
        args.resources.group = vec!["g".into()];
        let written = bindings(&args).unwrap();
        assert_eq!(ops(&written, ResourceType::Topic), ["DESCRIBE", "READ"]);
        assert_eq!(ops(&written, ResourceType::Group), ["READ"]);
    }

    #[test]
    fn bad_flags_are_explained() {
        let err = |args: &ChangeArgs| bindings(args).unwrap_err().to_string();
        assert!(err(&change(&[], &["User:a"], &[], &[])).contains("name a resource"));
        assert!(err(&change(&["t"], &[], &[], &[])).contains("name a principal"));
        assert!(err(&change(&["t"], &["alice"], &[], &[])).contains("Type:name"));
        assert!(err(&change(&["t"], &["User:a"], &[], &["Reed"])).contains("--operation"));
        let mut args = change(&["t"], &["User:a"], &[], &[]);
        args.resources.resource_pattern_type = Some("match".into());
        assert!(err(&args).contains("literal or prefixed"));
        args.resources.resource_pattern_type = Some("fuzzy".into());
        assert!(err(&args).contains("--resource-pattern-type"));
    }

    #[test]
    fn remove_without_principals_clears_the_resources() {
        let filters = remove_filters(&change(&["t"], &[], &[], &[])).unwrap();
        assert_eq!(filters.len(), 1);
        assert_eq!(filters[0].resource_name.as_deref(), Some("t"));
        assert_eq!(filters[0].principal, None);
        assert_eq!(filters[0].operation, AclOperation::Any);
        assert!(remove_filters(&change(&[], &[], &[], &[])).is_err());
        let exact = remove_filters(&change(&["t"], &["User:a"], &[], &["Write"])).unwrap();
        assert_eq!(exact[0].principal.as_deref(), Some("User:a"));
        assert_eq!(exact[0].operation, AclOperation::Write);
    }

    #[test]
    fn list_defaults_to_every_binding() {
        let all = list_filters(&ListArgs {
            resources: ResourceArgs::default(),
            principal: None,
        })
        .unwrap();
        assert_eq!(all, vec![AclBindingFilter::any()]);
        let mut resources = ResourceArgs {
            cluster: true,
            ..ResourceArgs::default()
        };
        resources.resource_pattern_type = Some("match".into());
        let of_cluster = list_filters(&ListArgs {
            resources,
            principal: Some("User:alice".into()),
        })
        .unwrap();
        assert_eq!(of_cluster[0].resource_type, ResourceType::Cluster);
        assert_eq!(of_cluster[0].pattern_type, PatternType::Match);
        assert_eq!(of_cluster[0].principal.as_deref(), Some("User:alice"));
    }
}
