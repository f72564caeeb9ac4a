//! ACLs: Kafka's authorization model, its bindings stored as security records, and the
//! authorizer every handler asks.
//!
//! A binding says that a principal (`User:alice`, or `User:*` for everyone) from a host (`*`, or
//! one IP address) is allowed or denied an operation on the resources a pattern names: a
//! literal name (the name `*` being every resource of the type) or a prefix. A request is
//! decided as Kafka's `StandardAuthorizer` decides it:
//! 1. super users (`super.users`) are allowed everything;
//! 2. a matching DENY wins over any ALLOW;
//! 3. a matching ALLOW allows: of the operation itself or of ALL; READ, WRITE, DELETE and ALTER
//!    also allow DESCRIBE, and ALTER_CONFIGS allows DESCRIBE_CONFIGS;
//! 4. a resource no binding names at all is allowed only with `allow.everyone.if.no.acl.found`.
//!
//! Bindings are records of kind [`ACL_KIND`] in the [`SecurityStore`] (one per binding, keyed by
//! [`AclBinding::key`]), so they are durable and, in a cluster, replicated. The authorizer
//! compiles them into an [`AclIndex`] (hash maps by resource name) once per store generation;
//! a check is then a few hash lookups and no allocation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::SecurityStore;
use crate::session::{Principal, Session};

/// The kind of the security records holding ACL bindings.
pub const ACL_KIND: &str = "acl";

/// The name of the one CLUSTER resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// The resource name and principal name that mean "every one".
pub const WILDCARD: &str = "*";

/// Defines a Kafka enum: its wire codes and names.
macro_rules! kafka_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value.
            pub const ALL_VALUES: &'static [Self] = &[$(Self::$variant,)*];

            /// The wire code.
            pub fn code(self) -> i8 {
                match self {
                    $(Self::$variant => $code,)*
                }
            }

            /// The value of a wire code, if known (UNKNOWN(0) is not).
            pub fn from_code(code: i8) -> Option<Self> {
                match code {
                    $($code => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// Kafka's name (`TOPIC`, `CLUSTER_ACTION`, …).
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            /// Parses a name as Kafka's tools take it: case, `_` and `-` do not matter
            /// (`Read`, `cluster-action`, `ClusterAction`, `TRANSACTIONAL_ID`).
            pub fn parse(text: &str) -> Option<Self> {
                let wanted = squash(text);
                Self::ALL_VALUES.iter().copied().find(|v| squash(v.name()) == wanted)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "unknown {} {text:?}",
                        stringify!($name)
                    ))
                })
            }
        }
    };
}

fn squash(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

kafka_enum! {
    /// What a binding is about. ANY is for filters only.
    ResourceType {
        /// Filters: every type.
        Any = 1, "ANY";
        /// A topic.
        Topic = 2, "TOPIC";
        /// A consumer group.
        Group = 3, "GROUP";
        /// The cluster (one resource, named `kafka-cluster`).
        Cluster = 4, "CLUSTER";
        /// A producer's transactional id.
        TransactionalId = 5, "TRANSACTIONAL_ID";
        /// A delegation token (stored and listed; Strata issues none).
        DelegationToken = 6, "DELEGATION_TOKEN";
        /// A user (stored and listed; for delegation tokens in Kafka).
        User = 7, "USER";
    }
}

kafka_enum! {
    /// How a binding's resource name matches. ANY and MATCH are for filters only.
    PatternType {
        /// Filters: any pattern type, with the exact name.
        Any = 1, "ANY";
        /// Filters: every binding that applies to the named resource (literal, `*`, prefixes).
        Match = 2, "MATCH";
        /// The name itself; `*` is every resource of the type.
        Literal = 3, "LITERAL";
        /// Every resource whose name starts with the name.
        Prefixed = 4, "PREFIXED";
    }
}

kafka_enum! {
    /// What a binding allows or denies. ANY is for filters only.
    AclOperation {
        /// Filters: any operation.
        Any = 1, "ANY";
        /// Every operation.
        All = 2, "ALL";
        /// Consume; commit offsets.
        Read = 3, "READ";
        /// Produce.
        Write = 4, "WRITE";
        /// Create topics.
        Create = 5, "CREATE";
        /// Delete topics, groups, records.
        Delete = 6, "DELETE";
        /// Change partitions, ACLs, reassignments.
        Alter = 7, "ALTER";
        /// See that a resource exists.
        Describe = 8, "DESCRIBE";
        /// Broker-to-broker requests (replica fetches, transaction markers).
        ClusterAction = 9, "CLUSTER_ACTION";
        /// Read configs.
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        /// Change configs.
        AlterConfigs = 11, "ALTER_CONFIGS";
        /// Idempotent produce without a transactional id.
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
        /// Delegation tokens (stored and listed only).
        CreateTokens = 13, "CREATE_TOKENS";
        /// Delegation tokens (stored and listed only).
        DescribeTokens = 14, "DESCRIBE_TOKENS";
    }
}

kafka_enum! {
    /// Whether a binding allows or denies. ANY is for filters only.
    AclPermission {
        /// Filters: either.
        Any = 1, "ANY";
        /// Denies; wins over any ALLOW.
        Deny = 2, "DENY";
        /// Allows.
        Allow = 3, "ALLOW";
    }
}

impl ResourceType {
    /// The operations Kafka defines on resources of this type: what an authorized-operations bit
    /// set (KIP-430) covers.
    pub fn operations(self) -> &'static [AclOperation] {
        use AclOperation::*;
        match self {
            Self::Topic => &[
                Read,
                Write,
                Create,
                Delete,
                Alter,
                Describe,
                DescribeConfigs,
                AlterConfigs,
            ],
            Self::Group => &[Read, Describe, Delete],
            Self::Cluster => &[
                Create,
                ClusterAction,
                DescribeConfigs,
                AlterConfigs,
                IdempotentWrite,
                Alter,
                Describe,
            ],
            Self::TransactionalId => &[Describe, Write],
            Self::DelegationToken => &[Describe],
            Self::User => &[CreateTokens, DescribeTokens],
            Self::Any => &[],
        }
    }
}

impl AclOperation {
    /// Whether an ALLOW of `self` allows `wanted`: the operation itself, ALL, and Kafka's
    /// implications (READ, WRITE, DELETE, ALTER → DESCRIBE; ALTER_CONFIGS → DESCRIBE_CONFIGS).
    pub fn allows(self, wanted: AclOperation) -> bool {
        use AclOperation::*;
        self == wanted
            || self == All
            || (wanted == Describe && matches!(self, Read | Write | Delete | Alter))
            || (wanted == DescribeConfigs && self == AlterConfigs)
    }

    /// Whether a DENY of `self` denies `wanted`: the operation itself and ALL, no implication.
    pub fn denies(self, wanted: AclOperation) -> bool {
        self == wanted || self == AclOperation::All
    }
}

/// An ACL binding: a resource pattern and an access control entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclBinding {
    /// TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID, DELEGATION_TOKEN or USER.
    pub resource_type: ResourceType,
    /// The resource's name, a prefix, or `*`.
    pub resource_name: String,
    /// LITERAL or PREFIXED.
    pub pattern_type: PatternType,
    /// `Type:name`, e.g. `User:alice`, or `User:*`.
    pub principal: String,
    /// `*` or an IP address.
    pub host: String,
    /// The operation (not ANY).
    pub operation: AclOperation,
    /// ALLOW or DENY.
    pub permission_type: AclPermission,
}

impl AclBinding {
    /// A binding from its wire codes (CreateAcls), checked with [`AclBinding::validate`].
    pub fn from_codes(
        resource_type: i8,
        resource_name: &str,
        pattern_type: i8,
        principal: &str,
        host: &str,
        operation: i8,
        permission_type: i8,
    ) -> Result<Self, String> {
        let binding = Self {
            resource_type: ResourceType::from_code(resource_type)
                .ok_or_else(|| format!("unknown resource type {resource_type}"))?,
            resource_name: resource_name.to_string(),
            pattern_type: PatternType::from_code(pattern_type)
                .ok_or_else(|| format!("unknown pattern type {pattern_type}"))?,
            principal: principal.to_string(),
            host: host.to_string(),
            operation: AclOperation::from_code(operation)
                .ok_or_else(|| format!("unknown operation {operation}"))?,
            permission_type: AclPermission::from_code(permission_type)
                .ok_or_else(|| format!("unknown permission type {permission_type}"))?,
        };
        binding.validate()?;
        Ok(binding)
    }

    /// Checks the binding as Kafka's CreateAcls does, saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if matches!(self.resource_type, ResourceType::Any) {
            return Err("resource type ANY is for filters, not bindings".into());
        }
        if !matches!(
            self.pattern_type,
            PatternType::Literal | PatternType::Prefixed
        ) {
            return Err(format!(
                "pattern type {} is for filters; a binding is LITERAL or PREFIXED",
                self.pattern_type
            ));
        }
        if self.resource_name.is_empty() {
            return Err("the resource name is empty".into());
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return Err(format!(
                "the only CLUSTER resource is {CLUSTER_NAME:?}, not {:?}",
                self.resource_name
            ));
        }
        if self.operation == AclOperation::Any {
            return Err("operation ANY is for filters, not bindings".into());
        }
        if self.permission_type == AclPermission::Any {
            return Err("permission ANY is for filters; a binding is ALLOW or DENY".into());
        }
        if Principal::parse(&self.principal).is_none() {
            return Err(format!(
                "principal {:?} is not Type:name (e.g. User:alice, User:*)",
                self.principal
            ));
        }
        if self.host != WILDCARD && self.host.parse::<IpAddr>().is_err() {
            return Err(format!(
                "host {:?} is neither * nor an IP address",
                self.host
            ));
        }
        Ok(())
    }

    /// The binding's record key: the same for equal bindings, different for different ones
    /// (a JSON array of its fields, so no name can be confused with a separator).
    pub fn key(&self) -> String {
        serde_json::to_string(&(
            self.resource_type,
            self.pattern_type,
            &self.resource_name,
            &self.principal,
            &self.host,
            self.operation,
            self.permission_type,
        ))
        .expect("strings serialize")
    }

    /// The binding's record value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a binding serializes")
    }
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} from {} {} on {}:{}:{}",
            self.principal,
            self.permission_type,
            self.host,
            self.operation,
            self.resource_type,
            self.pattern_type,
            self.resource_name
        )
    }
}

/// A filter over bindings, as DescribeAcls and DeleteAcls take it: `None` and the ANY values
/// match everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclBindingFilter {
    /// A type, or ANY.
    pub resource_type: ResourceType,
    /// A name, or `None` for any.
    pub resource_name: Option<String>,
    /// LITERAL, PREFIXED, ANY (any pattern with exactly this name) or MATCH (every binding that
    /// applies to the named resource).
    pub pattern_type: PatternType,
    /// A principal, or `None` for any.
    pub principal: Option<String>,
    /// A host, or `None` for any.
    pub host: Option<String>,
    /// An operation, or ANY.
    pub operation: AclOperation,
    /// ALLOW, DENY or ANY.
    pub permission_type: AclPermission,
}

impl AclBindingFilter {
    /// The filter matching every binding.
    pub fn any() -> Self {
        Self {
            resource_type: ResourceType::Any,
            resource_name: None,
            pattern_type: PatternType::Any,
            principal: None,
            host: None,
            operation: AclOperation::Any,
            permission_type: AclPermission::Any,
        }
    }

    /// A filter from its wire codes (DescribeAcls, DeleteAcls), refusing UNKNOWN and unknown
    /// codes as Kafka does.
    pub fn from_codes(
        resource_type: i8,
        resource_name: Option<&str>,
        pattern_type: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission_type: i8,
    ) -> Result<Self, String> {
        Ok(Self {
            resource_type: ResourceType::from_code(resource_type)
                .ok_or_else(|| format!("unknown resource type {resource_type}"))?,
            resource_name: resource_name.map(str::to_string),
            pattern_type: PatternType::from_code(pattern_type)
                .ok_or_else(|| format!("unknown pattern type {pattern_type}"))?,
            principal: principal.map(str::to_string),
            host: host.map(str::to_string),
            operation: AclOperation::from_code(operation)
                .ok_or_else(|| format!("unknown operation {operation}"))?,
            permission_type: AclPermission::from_code(permission_type)
                .ok_or_else(|| format!("unknown permission type {permission_type}"))?,
        })
    }

    /// Whether `binding` passes the filter (Kafka's `AclBindingFilter.matches`).
    pub fn matches(&self, binding: &AclBinding) -> bool {
        self.matches_pattern(binding)
            && self
                .principal
                .as_ref()
                .is_none_or(|p| *p == binding.principal)
            && self.host.as_ref().is_none_or(|h| *h == binding.host)
            && (self.operation == AclOperation::Any || self.operation == binding.operation)
            && (self.permission_type == AclPermission::Any
                || self.permission_type == binding.permission_type)
    }

    fn matches_pattern(&self, binding: &AclBinding) -> bool {
        if self.resource_type != ResourceType::Any && self.resource_type != binding.resource_type {
            return false;
        }
        let any_pattern = matches!(self.pattern_type, PatternType::Any | PatternType::Match);
        if !any_pattern && self.pattern_type != binding.pattern_type {
            return false;
        }
        let Some(name) = &self.resource_name else {
            return true;
        };
        if self.pattern_type != PatternType::Match {
            return *name == binding.resource_name;
        }
        match binding.pattern_type {
            PatternType::Prefixed => name.starts_with(&binding.resource_name),
            _ => *name == binding.resource_name || binding.resource_name == WILDCARD,
        }
    }
}

/// One compiled access control entry.
#[derive(Debug, Clone)]
struct Entry {
    principal_kind: Box<str>,
    /// `None`: every principal of the kind (`User:*`).
    principal_name: Option<Box<str>>,
    /// `None`: every host (`*`).
    host: Option<IpAddr>,
    operation: AclOperation,
    permission: AclPermission,
}

impl Entry {
    fn compile(binding: &AclBinding) -> Option<Self> {
        let principal = Principal::parse(&binding.principal)?;
        let host = match binding.host.as_str() {
            WILDCARD => None,
            ip => Some(ip.parse::<IpAddr>().ok()?.to_canonical()),
        };
        Some(Self {
            principal_kind: principal.kind.into(),
            principal_name: (principal.name != WILDCARD).then(|| principal.name.into()),
            host,
            operation: binding.operation,
            permission: binding.permission_type,
        })
    }

    fn applies_to(&self, principal: &Principal, host: IpAddr) -> bool {
        *self.principal_kind == *principal.kind
            && self
                .principal_name
                .as_deref()
                .is_none_or(|n| n == principal.name)
            && self.host.is_none_or(|h| h == host)
    }
}

/// The entries on the resources of one type.
#[derive(Debug, Default)]
struct TypeAcls {
    /// Literal names other than `*`.
    literal: HashMap<Box<str>, Vec<Entry>>,
    /// The literal `*`.
    wildcard: Vec<Entry>,
    /// Prefixes. Scanned in full: deployments hold few prefixes, and a scan of a short vector
    /// costs less than hashing every prefix of the name.
    prefixed: Vec<(Box<str>, Vec<Entry>)>,
}

impl TypeAcls {
    /// The entry lists that apply to the resource `name`.
    fn matching<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [Entry]> + 'a {
        let literal = self.literal.get(name).map(Vec::as_slice);
        let prefixed = self
            .prefixed
            .iter()
            .filter(move |(prefix, _)| name.starts_with(&**prefix))
            .map(|(_, entries)| entries.as_slice());
        literal
            .into_iter()
            .chain(std::iter::once(self.wildcard.as_slice()))
            .chain(prefixed)
    }

    fn all(&self) -> impl Iterator<Item = (&str, PatternType, &[Entry])> {
        let literal = self
            .literal
            .iter()
            .map(|(n, e)| (&**n, PatternType::Literal, e.as_slice()));
        let prefixed = self
            .prefixed
            .iter()
            .map(|(n, e)| (&**n, PatternType::Prefixed, e.as_slice()));
        literal
            .chain(std::iter::once((
                WILDCARD,
                PatternType::Literal,
                self.wildcard.as_slice(),
            )))
            .chain(prefixed)
    }
}

/// What an authorization decides, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A matching ALLOW (or a super user).
    Allowed,
    /// No binding names the resource, and `allow.everyone.if.no.acl.found` allows it.
    AllowedWithoutAcl,
    /// A matching DENY.
    Denied,
    /// Bindings name the resource, none allows.
    NotAllowed,
    /// No binding names the resource, and `allow.everyone.if.no.acl.found` is false.
    NoAcl,
}

impl Decision {
    /// Whether the request may go on.
    pub fn is_allowed(self) -> bool {
        matches!(self, Self::Allowed | Self::AllowedWithoutAcl)
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Allowed | Self::AllowedWithoutAcl => "allowed",
            Self::Denied => "a DENY binding matches",
            Self::NotAllowed => "no ALLOW binding matches",
            Self::NoAcl => "no binding names the resource",
        }
    }
}

/// Every binding, compiled for checks: see the module documentation.
#[derive(Debug, Default)]
pub struct AclIndex {
    /// The store generation compiled.
    generation: u64,
    /// Bindings by type: TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID.
    types: [TypeAcls; 4],
    /// Every stored binding, for DescribeAcls and DeleteAcls (DELEGATION_TOKEN and USER ones too).
    bindings: Vec<AclBinding>,
}

fn type_slot(resource_type: ResourceType) -> Option<usize> {
    match resource_type {
        ResourceType::Topic => Some(0),
        ResourceType::Group => Some(1),
        ResourceType::Cluster => Some(2),
        ResourceType::TransactionalId => Some(3),
        _ => None,
    }
}

impl AclIndex {
    /// Compiles the records of kind [`ACL_KIND`]; a record that does not parse or validate is
    /// skipped with a warning (it can only come from a newer or damaged store).
    pub fn compile<'a>(
        generation: u64,
        records: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Self {
        let mut index = Self {
            generation,
            ..Self::default()
        };
        for (key, value) in records {
            let binding = match serde_json::from_str::<AclBinding>(value) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "ACL record skipped: it does not parse");
                    continue;
                }
            };
            if let Err(why) = binding.validate() {
                tracing::warn!(%key, "ACL record skipped: {why}");
                continue;
            }
            index.add(binding);
        }
        index
    }

    fn add(&mut self, binding: AclBinding) {
        if let Some(slot) = type_slot(binding.resource_type) {
            let entry = Entry::compile(&binding).expect("validated bindings compile");
            let acls = &mut self.types[slot];
            let name = binding.resource_name.as_str();
            match binding.pattern_type {
                PatternType::Literal if name == WILDCARD => acls.wildcard.push(entry),
                PatternType::Literal => acls.literal.entry(name.into()).or_default().push(entry),
                _ => match acls.prefixed.iter_mut().find(|(p, _)| **p == *name) {
                    Some((_, entries)) => entries.push(entry),
                    None => acls.prefixed.push((name.into(), vec![entry])),
                },
            }
        }
        self.bindings.push(binding);
    }

    /// The store generation this index was compiled from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every binding, in record-key order.
    pub fn bindings(&self) -> &[AclBinding] {
        &self.bindings
    }

    /// Decides whether `principal` from `host` may do `operation` on the resource `name` of
    /// type `resource_type` (steps 2 to 4 of the module documentation; super users are the
    /// caller's).
    pub fn decide(
        &self,
        principal: &Principal,
        host: IpAddr,
        operation: AclOperation,
        resource_type: ResourceType,
        name: &str,
        allow_if_no_acl: bool,
    ) -> Decision {
        let Some(slot) = type_slot(resource_type) else {
            return Decision::NoAcl;
        };
        let host = host.to_canonical();
        let mut named = false;
        let mut allowed = false;
        for entries in self.types[slot].matching(name) {
            named |= !entries.is_empty();
            for entry in entries.iter().filter(|e| e.applies_to(principal, host)) {
                match entry.permission {
                    AclPermission::Deny if entry.operation.denies(operation) => {
                        return Decision::Denied;
                    }
                    AclPermission::Allow if entry.operation.allows(operation) => allowed = true,
                    _ => {}
                }
            }
        }
        match (allowed, named, allow_if_no_acl) {
            (true, _, _) => Decision::Allowed,
            (false, true, _) => Decision::NotAllowed,
            (false, false, true) => Decision::AllowedWithoutAcl,
            (false, false, false) => Decision::NoAcl,
        }
    }

    /// Whether `principal` may do `operation` on at least one resource of `resource_type`
    /// (Kafka's `authorizeByResourceType`, KIP-679: InitProducerId for idempotence with WRITE
    /// on some topic): an ALLOW on some pattern that no DENY of the same principal covers
    /// (a literal `*` DENY covers all, a DENY prefix covers the names it starts).
    pub fn allows_any(
        &self,
        principal: &Principal,
        host: IpAddr,
        operation: AclOperation,
        resource_type: ResourceType,
        allow_if_no_acl: bool,
    ) -> bool {
        let Some(slot) = type_slot(resource_type) else {
            return false;
        };
        let acls = &self.types[slot];
        let host = host.to_canonical();
        let applies =
            |e: &Entry, permission| e.permission == permission && e.applies_to(principal, host);
        let denials: Vec<(&str, PatternType)> = acls
            .all()
            .filter(|(_, _, entries)| {
                entries
                    .iter()
                    .any(|e| applies(e, AclPermission::Deny) && e.operation.denies(operation))
            })
            .map(|(name, pattern, _)| (name, pattern))
            .collect();
        if denials
            .iter()
            .any(|&(n, p)| n == WILDCARD && p == PatternType::Literal)
        {
            return false;
        }
        let covered = |name: &str, pattern: PatternType| {
            denials.iter().any(|&(n, p)| match p {
                PatternType::Prefixed => name.starts_with(n),
                _ => pattern == PatternType::Literal && n == name,
            })
        };
        let any_acl = acls.all().any(|(_, _, entries)| !entries.is_empty());
        let allowed = acls.all().any(|(name, pattern, entries)| {
            entries
                .iter()
                .any(|e| applies(e, AclPermission::Allow) && e.operation.allows(operation))
                && !covered(name, pattern)
        });
        allowed || (!any_acl && allow_if_no_acl)
    }
}

/// The authorizer's settings: `authorizer.enabled` (or a non-empty `authorizer.class.name`),
/// `super.users`, `allow.everyone.if.no.acl.found`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclSettings {
    /// Whether requests are authorized at all.
    pub enabled: bool,
    /// Principals allowed everything (brokers' principals belong here).
    pub super_users: Vec<Principal>,
    /// Whether a resource no binding names is open to everyone.
    pub allow_everyone_if_no_acl_found: bool,
}

impl AclSettings {
    /// Parses `super.users`: principals separated by `;` (`User:admin;User:broker`).
    pub fn parse_super_users(value: &str) -> Result<Vec<Principal>, String> {
        value
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                Principal::parse(p)
                    .ok_or_else(|| format!("super.users: {p:?} is not Type:name (User:admin)"))
            })
            .collect()
    }
}

/// The broker's authorizer: settings, the store, and the index compiled from the store.
#[derive(Debug)]
pub struct Authorizer {
    settings: AclSettings,
    store: Arc<SecurityStore>,
    index: RwLock<Arc<AclIndex>>,
}

impl Authorizer {
    /// An authorizer over the bindings of `store`.
    pub fn new(settings: AclSettings, store: Arc<SecurityStore>) -> Self {
        Self {
            settings,
            store,
            // No store reaches this generation: the first use compiles.
            index: RwLock::new(Arc::new(AclIndex {
                generation: u64::MAX,
                ..AclIndex::default()
            })),
        }
    }

    /// Whether requests are authorized.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The store the bindings live in.
    pub fn store(&self) -> &Arc<SecurityStore> {
        &self.store
    }

    /// The bindings as compiled from the store's current records (compiled again only when
    /// the store's generation changed).
    pub fn index(&self) -> Arc<AclIndex> {
        let records = self.store.records();
        {
            let index = self.index.read();
            if index.generation == records.generation {
                return Arc::clone(&index);
            }
        }
        let compiled = Arc::new(AclIndex::compile(
            records.generation,
            records.kind(ACL_KIND),
        ));
        *self.index.write() = Arc::clone(&compiled);
        compiled
    }

    /// What `session` may do during one request: resolves the super user and the index once,
    /// so that each check of the request is a few hash lookups (and nothing at all when
    /// authorization is off or the principal is a super user).
    pub(crate) fn access<'a>(&self, session: &'a Session) -> Access<'a> {
        let checked = (self.settings.enabled
            && !self.settings.super_users.contains(&session.principal))
        .then(|| (self.index(), Cow::Borrowed(session)));
        Access {
            allow_if_no_acl: self.settings.allow_everyone_if_no_acl_found,
            checked,
        }
    }
}

/// The checks of one request by one session: see [`Authorizer::access`].
#[derive(Debug)]
pub(crate) struct Access<'a> {
    allow_if_no_acl: bool,
    /// The bindings and the session checked against them (borrowed, or owned by a request
    /// answered apart); `None` when everything is allowed.
    checked: Option<(Arc<AclIndex>, Cow<'a, Session>)>,
}

impl Access<'_> {
    /// The same checks for a request answered apart (a waiting fetch, a timestamp search): the
    /// session is copied only when there is something to check.
    pub(crate) fn into_owned(self) -> Access<'static> {
        Access {
            allow_if_no_acl: self.allow_if_no_acl,
            checked: self
                .checked
                .map(|(index, session)| (index, Cow::Owned(session.into_owned()))),
        }
    }

    /// Whether every check passes without looking (authorization off, or a super user).
    pub(crate) fn is_unrestricted(&self) -> bool {
        self.checked.is_none()
    }

    /// Decides, without logging.
    pub(crate) fn decide(
        &self,
        operation: AclOperation,
        resource_type: ResourceType,
        name: &str,
    ) -> Decision {
        match &self.checked {
            None => Decision::Allowed,
            Some((index, session)) => index.decide(
                &session.principal,
                session.peer.ip(),
                operation,
                resource_type,
                name,
                self.allow_if_no_acl,
            ),
        }
    }

    /// Whether the session may do `operation` on the resource; a denial is written to the
    /// audit log (`strata::audit`). For the checks that refuse a request.
    pub(crate) fn check(
        &self,
        operation: AclOperation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        let decision = self.decide(operation, resource_type, name);
        if let (false, Some((_, session))) = (decision.is_allowed(), &self.checked) {
            tracing::info!(
                target: "strata::audit",
                principal = %session.principal,
                client = %session.peer,
                listener = %session.listener,
                operation = operation.name(),
                resource_type = resource_type.name(),
                resource = name,
                reason = decision.reason(),
                "authorization denied"
            );
        }
        decision.is_allowed()
    }

    /// Whether the session may do `operation` on the resource, without logging a denial: for
    /// filters that leave out what may not be seen (a full Metadata listing, ListGroups), as
    /// Kafka does.
    pub(crate) fn allows(
        &self,
        operation: AclOperation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        self.decide(operation, resource_type, name).is_allowed()
    }

    /// KIP-430's bit set of the operations the session may do on the resource: bit `code` for
    /// each of [`ResourceType::operations`] allowed.
    /// As Kafka, nothing (0) without DESCRIBE on the resource.
    pub(crate) fn authorized_operations(&self, resource_type: ResourceType, name: &str) -> i32 {
        let operations = resource_type.operations();
        if operations.contains(&AclOperation::Describe)
            && !self.allows(AclOperation::Describe, resource_type, name)
        {
            return 0;
        }
        operations
            .iter()
            .filter(|&&op| self.allows(op, resource_type, name))
            .fold(0, |bits, op| bits | 1 << op.code())
    }

    /// [`Access::check`] on the cluster resource.
    pub(crate) fn check_cluster(&self, operation: AclOperation) -> bool {
        self.check(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// [`Access::check`] on a topic.
    pub(crate) fn check_topic(&self, operation: AclOperation, topic: &str) -> bool {
        self.check(operation, ResourceType::Topic, topic)
    }

    /// [`Access::check`] on a group.
    pub(crate) fn check_group(&self, operation: AclOperation, group: &str) -> bool {
        self.check(operation, ResourceType::Group, group)
    }

    /// [`Access::check`] on a transactional id.
    pub(crate) fn check_txn(&self, operation: AclOperation, transactional_id: &str) -> bool {
        self.check(operation, ResourceType::TransactionalId, transactional_id)
    }

    /// Whether the session may do `operation` on some resource of `resource_type` (see
    /// [`AclIndex::allows_any`]); not logged.
    pub(crate) fn allows_any(&self, operation: AclOperation, resource_type: ResourceType) -> bool {
        match &self.checked {
            None => true,
            Some((index, session)) => index.allows_any(
                &session.principal,
                session.peer.ip(),
                operation,
                resource_type,
                self.allow_if_no_acl,
            ),
        }
    }
}

#[cfg(test)]
mod enforcement_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use AclOperation::*;
    use ResourceType::{Cluster, Group, Topic, TransactionalId};

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const OTHER_HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn binding(
        spec: (ResourceType, PatternType, &str),
        principal: &str,
        operation: AclOperation,
        permission: AclPermission,
    ) -> AclBinding {
        AclBinding {
            resource_type: spec.0,
            pattern_type: spec.1,
            resource_name: spec.2.into(),
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission_type: permission,
        }
    }

    fn allow(spec: (ResourceType, PatternType, &str), who: &str, op: AclOperation) -> AclBinding {
        binding(spec, who, op, AclPermission::Allow)
    }

    fn deny(spec: (ResourceType, PatternType, &str), who: &str, op: AclOperation) -> AclBinding {
        binding(spec, who, op, AclPermission::Deny)
    }

    fn lit(t: ResourceType, name: &str) -> (ResourceType, PatternType, &str) {
        (t, PatternType::Literal, name)
    }

    fn pre(t: ResourceType, name: &str) -> (ResourceType, PatternType, &str) {
        (t, PatternType::Prefixed, name)
    }

    fn index(bindings: &[AclBinding]) -> AclIndex {
        let records: BTreeMap<String, String> =
            bindings.iter().map(|b| (b.key(), b.to_json())).collect();
        AclIndex::compile(1, &records)
    }

    fn user(name: &str) -> Principal {
        Principal::user(name)
    }

    fn decide(
        index: &AclIndex,
        who: &str,
        op: AclOperation,
        t: ResourceType,
        name: &str,
    ) -> Decision {
        index.decide(&user(who), HOST, op, t, name, false)
    }

    #[test]
    fn codes_and_names_are_kafka_s() {
        assert_eq!(ResourceType::from_code(2), Some(Topic));
        assert_eq!(ResourceType::from_code(5), Some(TransactionalId));
        assert_eq!(ResourceType::from_code(0), None);
        assert_eq!(PatternType::Prefixed.code(), 4);
        assert_eq!(PatternType::Match.code(), 2);
        assert_eq!(IdempotentWrite.code(), 12);
        assert_eq!(AclOperation::from_code(9), Some(ClusterAction));
        assert_eq!(AclPermission::Allow.code(), 3);
        assert_eq!(AclOperation::parse("ClusterAction"), Some(ClusterAction));
        assert_eq!(
            AclOperation::parse("describe-configs"),
            Some(DescribeConfigs)
        );
        assert_eq!(AclOperation::parse("read"), Some(Read));
        assert_eq!(
            ResourceType::parse("transactional_id"),
            Some(TransactionalId)
        );
        assert_eq!(AclOperation::parse("Reed"), None);
    }

    #[test]
    fn bindings_round_trip_and_keys_are_canonical() {
        let a = allow(lit(Topic, "orders|x"), "User:alice", Read);
        let json = a.to_json();
        assert!(
            json.contains("\"TOPIC\"") && json.contains("\"READ\""),
            "{json}"
        );
        let back: AclBinding = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.key(), back.key());
        let mut b = a.clone();
        b.resource_name = "orders".into();
        b.principal = "|x\",User:alice".into();
        assert_ne!(a.key(), b.key());
        assert!(serde_json::from_str::<AclBinding>(&json.replace("READ", "REED")).is_err());
    }

    #[test]
    fn invalid_bindings_are_refused_with_the_reason() {
        let ok = allow(lit(Topic, "t"), "User:alice", Read);
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut AclBinding)| {
            let mut b = ok.clone();
            f(&mut b);
            b.validate().unwrap_err()
        };
        assert!(bad(&|b| b.resource_type = ResourceType::Any).contains("ANY"));
        assert!(bad(&|b| b.pattern_type = PatternType::Match).contains("MATCH"));
        assert!(bad(&|b| b.resource_name.clear()).contains("empty"));
        assert!(bad(&|b| b.principal = "alice".into()).contains("Type:name"));
        assert!(bad(&|b| b.host = "example.com".into()).contains("IP"));
        assert!(bad(&|b| b.operation = Any).contains("ANY"));
        assert!(bad(&|b| b.permission_type = AclPermission::Any).contains("ALLOW"));
        assert!(
            bad(&|b| {
                b.resource_type = Cluster;
                b.resource_name = "c".into()
            })
            .contains("kafka-cluster")
        );
    }

    #[test]
    fn literal_wildcard_and_prefixed_patterns_match() {
        let index = index(&[
            allow(lit(Topic, "orders"), "User:alice", Read),
            allow(lit(Topic, "*"), "User:bob", Write),
            allow(pre(Topic, "logs-"), "User:carol", Read),
        ]);
        assert_eq!(
            decide(&index, "alice", Read, Topic, "orders"),
            Decision::Allowed
        );
        assert_eq!(
            decide(&index, "alice", Read, Topic, "orders2"),
            Decision::NotAllowed
        );
        assert_eq!(
            decide(&index, "alice", Write, Topic, "orders"),
            Decision::NotAllowed
        );
        assert!(decide(&index, "bob", Write, Topic, "anything").is_allowed());
        assert!(decide(&index, "carol", Read, Topic, "logs-app").is_allowed());
        assert!(!decide(&index, "carol", Read, Topic, "logs").is_allowed());
        // The wildcard names every topic: no topic is unnamed, so the default does not apply.
        assert_eq!(
            index.decide(&user("dave"), HOST, Read, Topic, "fresh", true),
            Decision::NotAllowed
        );
        // Another resource type is unaffected.
        assert_eq!(
            decide(&index, "bob", Write, Group, "orders"),
            Decision::NoAcl
        );
    }

    #[test]
    fn deny_wins_and_is_not_implied() {
        let index = index(&[
            allow(lit(Topic, "*"), "User:*", All),
            deny(pre(Topic, "secret"), "User:alice", Read),
            deny(lit(Topic, "t"), "User:bob", All),
        ]);
        assert_eq!(
            decide(&index, "alice", Read, Topic, "secret-1"),
            Decision::Denied
        );
        // A DENY of READ does not deny DESCRIBE (no implication for denials).
        assert!(decide(&index, "alice", Describe, Topic, "secret-1").is_allowed());
        assert!(decide(&index, "alice", Read, Topic, "public").is_allowed());
        assert_eq!(
            decide(&index, "bob", Describe, Topic, "t"),
            Decision::Denied
        );
        assert!(decide(&index, "carol", Read, Topic, "secret-1").is_allowed());
    }

    #[test]
    fn implications_are_kafka_s() {
        for op in [Read, Write, Delete, Alter] {
            let index = index(&[allow(lit(Group, "g"), "User:alice", op)]);
            assert!(
                decide(&index, "alice", Describe, Group, "g").is_allowed(),
                "{op}"
            );
            assert!(!decide(&index, "alice", DescribeConfigs, Group, "g").is_allowed());
        }
        let configs = index(&[allow(lit(Topic, "t"), "User:alice", AlterConfigs)]);
        assert!(decide(&configs, "alice", DescribeConfigs, Topic, "t").is_allowed());
        assert!(!decide(&configs, "alice", Describe, Topic, "t").is_allowed());
        let create = index(&[allow(lit(Topic, "t"), "User:alice", Create)]);
        assert!(!decide(&create, "alice", Describe, Topic, "t").is_allowed());
        let index = index(&[allow(lit(Cluster, CLUSTER_NAME), "User:alice", All)]);
        for &op in AclOperation::ALL_VALUES {
            if op != Any {
                assert!(decide(&index, "alice", op, Cluster, CLUSTER_NAME).is_allowed());
            }
        }
    }

    #[test]
    fn principals_and_hosts_match_exactly_or_by_wildcard() {
        let mut from_host = allow(lit(Topic, "t"), "User:alice", Read);
        from_host.host = HOST.to_string();
        let index = index(&[from_host, allow(lit(Topic, "u"), "User:*", Read)]);
        assert!(
            index
                .decide(&user("alice"), HOST, Read, Topic, "t", false)
                .is_allowed()
        );
        assert!(
            !index
                .decide(&user("alice"), OTHER_HOST, Read, Topic, "t", false)
                .is_allowed()
        );
        // An IPv4 client seen on a dual-stack socket is the same host.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(
            index
                .decide(&user("alice"), mapped, Read, Topic, "t", false)
                .is_allowed()
        );
        assert!(
            !index
                .decide(&user("Alice"), HOST, Read, Topic, "t", false)
                .is_allowed()
        );
        assert!(
            index
                .decide(&user("anyone"), HOST, Read, Topic, "u", false)
                .is_allowed()
        );
        let other_kind = Principal {
            kind: "Group".into(),
            name: "alice".into(),
        };
        assert!(
            !index
                .decide(&other_kind, HOST, Read, Topic, "u", false)
                .is_allowed()
        );
    }

    #[test]
    fn no_acl_on_a_resource_follows_the_setting() {
        let index = index(&[allow(lit(Topic, "t"), "User:alice", Read)]);
        assert_eq!(
            index.decide(&user("bob"), HOST, Read, Topic, "other", false),
            Decision::NoAcl
        );
        assert_eq!(
            index.decide(&user("bob"), HOST, Read, Topic, "other", true),
            Decision::AllowedWithoutAcl
        );
        // A resource with bindings for someone else is not "without ACL".
        assert_eq!(
            index.decide(&user("bob"), HOST, Read, Topic, "t", true),
            Decision::NotAllowed
        );
    }

    #[test]
    fn allows_any_finds_an_allow_not_covered_by_a_deny() {
        let write_some = index(&[allow(lit(Topic, "t"), "User:alice", Write)]);
        assert!(write_some.allows_any(&user("alice"), HOST, Write, Topic, false));
        assert!(!write_some.allows_any(&user("bob"), HOST, Write, Topic, false));
        assert!(!write_some.allows_any(&user("alice"), HOST, Write, TransactionalId, false));
        let denied = index(&[
            allow(pre(Topic, "a-"), "User:alice", Write),
            deny(pre(Topic, "a"), "User:alice", Write),
        ]);
        assert!(!denied.allows_any(&user("alice"), HOST, Write, Topic, false));
        let denied_all = index(&[
            allow(lit(Topic, "t"), "User:alice", Write),
            deny(lit(Topic, "*"), "User:*", All),
        ]);
        assert!(!denied_all.allows_any(&user("alice"), HOST, Write, Topic, false));
        let empty = index(&[]);
        assert!(empty.allows_any(&user("x"), HOST, Write, Topic, true));
        assert!(!empty.allows_any(&user("x"), HOST, Write, Topic, false));
    }

    #[test]
    fn filters_match_as_kafka_s() {
        let lit_t = allow(lit(Topic, "orders"), "User:alice", Read);
        let star = allow(lit(Topic, "*"), "User:bob", Write);
        let prefix = deny(pre(Topic, "ord"), "User:carol", Read);
        let group = allow(lit(Group, "orders"), "User:alice", Read);
        let all = [&lit_t, &star, &prefix, &group];
        let hits = |f: &AclBindingFilter| {
            all.iter()
                .filter(|b| f.matches(b))
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        let mut f = AclBindingFilter::any();
        assert_eq!(hits(&f).len(), 4);
        f.resource_type = Topic;
        assert_eq!(hits(&f).len(), 3);
        f.resource_name = Some("orders".into());
        // ANY: any pattern type, the exact name.
        assert_eq!(hits(&f), vec![lit_t.to_string()]);
        f.pattern_type = PatternType::Match;
        assert_eq!(
            hits(&f).len(),
            3,
            "literal, * and the prefix apply to orders"
        );
        f.pattern_type = PatternType::Prefixed;
        assert!(hits(&f).is_empty());
        f.resource_name = Some("ord".into());
        assert_eq!(hits(&f), vec![prefix.to_string()]);
        let mut f = AclBindingFilter::any();
        f.principal = Some("User:alice".into());
        f.operation = Read;
        f.permission_type = AclPermission::Allow;
        assert_eq!(hits(&f).len(), 2);
        f.host = Some("10.0.0.1".into());
        assert!(hits(&f).is_empty());
    }

    #[test]
    fn damaged_records_are_skipped_not_fatal() {
        let good = allow(lit(Topic, "t"), "User:alice", Read);
        let mut invalid = good.clone();
        invalid.host = "nowhere".into();
        let records = BTreeMap::from([
            ("a".to_string(), "not json".to_string()),
            ("b".to_string(), invalid.to_json()),
            (good.key(), good.to_json()),
        ]);
        let index = AclIndex::compile(7, &records);
        assert_eq!(index.generation(), 7);
        assert_eq!(index.bindings(), &[good]);
    }

    fn session_of(name: &str) -> Session {
        let mut session = Session::plaintext("10.0.0.1:5000".parse().unwrap());
        session.principal = user(name);
        session
    }

    #[tokio::test]
    async fn the_authorizer_follows_the_store_and_exempts_super_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SecurityStore::local(dir.path()).unwrap());
        let settings = AclSettings {
            enabled: true,
            super_users: vec![user("admin")],
            allow_everyone_if_no_acl_found: false,
        };
        let authorizer = Authorizer::new(settings, Arc::clone(&store));
        let (alice, admin) = (session_of("alice"), session_of("admin"));
        assert!(!authorizer.access(&alice).check_topic(Read, "t"));
        assert!(authorizer.access(&admin).check_topic(Read, "t"));
        assert!(authorizer.access(&admin).is_unrestricted());
        let grant = allow(lit(Topic, "t"), "User:alice", Read);
        let change = |value: Option<String>| crate::security::SecurityChange {
            kind: ACL_KIND.into(),
            key: grant.key(),
            value,
        };
        store
            .change(vec![change(Some(grant.to_json()))])
            .await
            .unwrap();
        let access = authorizer.access(&alice);
        assert!(access.check_topic(Read, "t") && access.check_topic(Describe, "t"));
        assert!(!access.check_topic(Write, "t"));
        // KIP-430's bit set: READ (3) and the DESCRIBE (8) it implies.
        assert_eq!(access.authorized_operations(Topic, "t"), 1 << 3 | 1 << 8);
        let everything = authorizer.access(&admin).authorized_operations(Group, "g");
        assert_eq!(everything, 1 << 3 | 1 << 6 | 1 << 8);
        // Nothing without DESCRIBE, as Kafka (here: CREATE alone on the cluster).
        let create = allow(lit(Cluster, CLUSTER_NAME), "User:alice", Create);
        let change_create = crate::security::SecurityChange {
            kind: ACL_KIND.into(),
            key: create.key(),
            value: Some(create.to_json()),
        };
        store.change(vec![change_create]).await.unwrap();
        let access = authorizer.access(&alice);
        assert!(access.check_cluster(Create));
        assert_eq!(access.authorized_operations(Cluster, CLUSTER_NAME), 0);
        // An owned copy (a request answered apart) decides the same.
        let owned = access.into_owned();
        assert!(owned.check_topic(Read, "t"));
        // The index is compiled once per generation.
        assert!(Arc::ptr_eq(&authorizer.index(), &authorizer.index()));
        store.change(vec![change(None)]).await.unwrap();
        assert!(!authorizer.access(&alice).check_topic(Read, "t"));
        // Off: everything is allowed, nothing is looked up.
        let off = Authorizer::new(AclSettings::default(), store);
        assert!(off.access(&alice).is_unrestricted());
    }

    #[test]
    fn super_users_parse() {
        let users = AclSettings::parse_super_users(" User:admin; User:CN=b,O=c ;").unwrap();
        assert_eq!(users, vec![user("admin"), user("CN=b,O=c")]);
        assert!(AclSettings::parse_super_users("admin").is_err());
        assert!(AclSettings::parse_super_users("").unwrap().is_empty());
    }
}
