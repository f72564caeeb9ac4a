//! AlterClientQuotas (KIP-546): sets and removes client quotas, as
//! `kafka-configs --alter --entity-type users|clients --add-config producer_byte_rate=…` asks.
//!
//! Each entry is checked as Kafka's controller checks it (`ClientQuotaControlManager`): a
//! known entity (user, client id, or both; `ip` quotas are not supported), each quota key once,
//! a known key (`producer_byte_rate`, `consumer_byte_rate`, `request_percentage`) and a positive
//! value (whole for the byte rates); else the entry gets INVALID_REQUEST and changes nothing.
//! The valid entries' records change in one durable step of the security store (replicated in a
//! cluster), unless `validate_only`.
//!
//! An entity's quotas are one record, so an entry is a read-modify-write of it. The write is
//! conditional on the records read ([`crate::security::SecurityStore::change_if`]): when another
//! alter changed one of them in between, the request is read and planned again (up to
//! [`ATTEMPTS_MAX`] times), so two alters of different keys of one entity both take effect.

use std::collections::BTreeSet;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_client_quotas_request::EntryData as AlterEntry;
use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
use kafka_protocol::messages::{AlterClientQuotasRequest, AlterClientQuotasResponse};

use super::{Context, str_bytes};
use crate::error::Error;
use crate::security::quota::{self, Entity, QuotaType};
use crate::security::{SecurityChange, SecurityExpectation, SecurityRecords};

/// Read-modify-writes tried before a conflict is answered (REQUEST_TIMED_OUT, retriable): an
/// attempt loses only to a change committed since its read, so a few are enough unless one
/// entity is altered in a tight loop.
const ATTEMPTS_MAX: u32 = 5;

/// Each entry's outcome: `Err` with the code and message it is answered with.
type Outcomes = Vec<Result<(), (ResponseError, String)>>;

pub(super) async fn handle(
    ctx: &Context,
    authorized: bool,
    request: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let mut attempt = 1;
    let (outcomes, stored) = loop {
        let records = ctx.security.records();
        let (outcomes, changes) = plan(&records, authorized, &request);
        if request.validate_only || changes.is_empty() {
            break (outcomes, Ok(()));
        }
        let expected = changes
            .iter()
            .map(|c| SecurityExpectation {
                kind: c.kind.clone(),
                key: c.key.clone(),
                value: records.get(&c.kind, &c.key).cloned(),
            })
            .collect();
        match ctx.security.change_if(expected, changes).await {
            Err(Error::SecurityConflict(why)) if attempt < ATTEMPTS_MAX => {
                tracing::debug!(
                    attempt,
                    why,
                    "AlterClientQuotas: read again after a conflict"
                );
                // In a cluster this broker's copy of the records may lag the change that won:
                // give it a moment to catch up.
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
                attempt += 1;
            }
            stored => break (outcomes, stored),
        }
    };
    let entries = request
        .entries
        .iter()
        .zip(outcomes)
        .map(|(entry, outcome)| {
            let (code, message) = match (outcome, &stored) {
                (Err((code, message)), _) => (code.code(), Some(message)),
                (Ok(()), Err(e)) => (e.code().code(), Some(e.to_string())),
                (Ok(()), Ok(())) => (0, None),
            };
            EntryData::default()
                .with_error_code(code)
                .with_error_message(message.map(str_bytes))
                .with_entity(
                    entry
                        .entity
                        .iter()
                        .map(|e| {
                            EntityData::default()
                                .with_entity_type(e.entity_type.clone())
                                .with_entity_name(e.entity_name.clone())
                        })
                        .collect(),
                )
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}

/// Each entry's outcome and the store changes the valid ones make, from `records`.
fn plan(
    records: &SecurityRecords,
    authorized: bool,
    request: &AlterClientQuotasRequest,
) -> (Outcomes, Vec<SecurityChange>) {
    let mut seen = BTreeSet::new();
    let mut changes = Vec::new();
    let mut outcomes: Outcomes = Vec::with_capacity(request.entries.len());
    for entry in &request.entries {
        if !authorized {
            // ALTER_CONFIGS on the cluster, checked before the request ran apart.
            let why = "ALTER_CONFIGS on the cluster is needed".to_string();
            outcomes.push(Err((ResponseError::ClusterAuthorizationFailed, why)));
            continue;
        }
        let outcome = change_for(records, entry, &mut seen)
            .map(|change| {
                if let Some(change) = change {
                    changes.push(change);
                }
            })
            .map_err(|message| (ResponseError::InvalidRequest, message));
        outcomes.push(outcome);
    }
    (outcomes, changes)
}

/// The store change one entry makes (`None`: nothing changes), or why it is refused.
fn change_for(
    records: &SecurityRecords,
    entry: &AlterEntry,
    seen: &mut BTreeSet<Entity>,
) -> Result<Option<SecurityChange>, String> {
    let entity = Entity::from_wire(
        entry
            .entity
            .iter()
            .map(|e| (e.entity_type.as_str(), e.entity_name.as_deref())),
    )?;
    if !seen.insert(entity.clone()) {
        return Err(format!("Ignoring duplicate entity {}", entity.key()));
    }
    let key = entity.key();
    let current = records
        .get(quota::KIND, &key)
        .and_then(|json| quota::parse_values(&key, json))
        .unwrap_or_default();
    let mut values = current.clone();
    let mut keys = BTreeSet::new();
    for op in &entry.ops {
        let name = op.key.as_str();
        if !keys.insert(name) {
            return Err(format!(
                "Duplicate quota key {name} not updating quota for this entity {key}"
            ));
        }
        let kind =
            QuotaType::parse(name).ok_or_else(|| format!("Invalid configuration key {name}"))?;
        if op.remove {
            values.remove(name);
        } else {
            kind.validate(op.value)?;
            values.insert(name.to_string(), op.value);
        }
    }
    if values == current {
        return Ok(None);
    }
    Ok(Some(SecurityChange {
        kind: quota::KIND.to_string(),
        key,
        value: quota::values_json(&values),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::DescribeClientQuotasRequest;
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, OpData};
    use kafka_protocol::messages::describe_client_quotas_request::ComponentData;

    fn entry(entity: &[(&str, Option<&str>)], ops: &[(&str, f64, bool)]) -> AlterEntry {
        AlterEntry::default()
            .with_entity(
                entity
                    .iter()
                    .map(|(kind, name)| {
                        EntityData::default()
                            .with_entity_type(str_bytes(*kind))
                            .with_entity_name(name.map(str_bytes))
                    })
                    .collect(),
            )
            .with_ops(
                ops.iter()
                    .map(|(key, value, remove)| {
                        OpData::default()
                            .with_key(str_bytes(*key))
                            .with_value(*value)
                            .with_remove(*remove)
                    })
                    .collect(),
            )
    }

    async fn alter(ctx: &Context, entries: Vec<AlterEntry>, validate_only: bool) -> Vec<i16> {
        let request = AlterClientQuotasRequest::default()
            .with_entries(entries)
            .with_validate_only(validate_only);
        handle(ctx, true, request)
            .await
            .entries
            .iter()
            .map(|e| e.error_code)
            .collect()
    }

    /// Entities as `(type, name)` pairs and their quotas as `(key, value)` pairs.
    type Described = Vec<(Vec<(String, Option<String>)>, Vec<(String, f64)>)>;

    fn describe(ctx: &Context) -> Described {
        let request = DescribeClientQuotasRequest::default().with_components(vec![
            ComponentData::default()
                .with_entity_type(str_bytes("user"))
                .with_match_type(2)
                .with_match(None),
        ]);
        let session = crate::handler::tests::session();
        let access = ctx.acl.access(&session);
        let response = super::super::describe_client_quotas::handle(ctx, &access, request);
        assert_eq!(response.error_code, 0);
        response
            .entries
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.entity
                        .into_iter()
                        .map(|d| {
                            (
                                d.entity_type.to_string(),
                                d.entity_name.map(|n| n.to_string()),
                            )
                        })
                        .collect(),
                    e.values
                        .into_iter()
                        .map(|v| (v.key.to_string(), v.value))
                        .collect(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn quotas_are_set_described_removed_and_bad_entries_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = super::super::tests::context(dir.path());
        let invalid = ResponseError::InvalidRequest.code();
        let alice_app: &[(&str, Option<&str>)] =
            &[("user", Some("alice")), ("client-id", Some("app"))];
        // validate_only checks and stores nothing.
        assert_eq!(
            alter(
                &ctx,
                vec![entry(alice_app, &[("producer_byte_rate", 1024.0, false)])],
                true
            )
            .await,
            vec![0]
        );
        assert!(describe(&ctx).is_empty());
        let codes = alter(
            &ctx,
            vec![
                entry(
                    alice_app,
                    &[
                        ("producer_byte_rate", 1024.0, false),
                        ("request_percentage", 12.5, false),
                    ],
                ),
                entry(&[("user", None)], &[("consumer_byte_rate", 2048.0, false)]),
                entry(
                    &[("user", Some("bob"))],
                    &[("producer_bytes_rate", 1.0, false)],
                ),
                entry(
                    &[("user", Some("bob"))],
                    &[("producer_byte_rate", 1.5, false)],
                ),
                entry(
                    &[("group", Some("g"))],
                    &[("producer_byte_rate", 1.0, false)],
                ),
                entry(
                    &[("user", Some("carol"))],
                    &[
                        ("producer_byte_rate", 1.0, false),
                        ("producer_byte_rate", 2.0, false),
                    ],
                ),
                entry(
                    &[("user", Some("dave"))],
                    &[("consumer_byte_rate", 0.0, false)],
                ),
            ],
            false,
        )
        .await;
        assert_eq!(
            codes,
            vec![0, 0, invalid, invalid, invalid, invalid, invalid]
        );
        let described = describe(&ctx);
        assert_eq!(described.len(), 2, "{described:?}");
        assert!(described.contains(&(
            vec![
                ("user".into(), Some("alice".into())),
                ("client-id".into(), Some("app".into()))
            ],
            vec![
                ("producer_byte_rate".into(), 1024.0),
                ("request_percentage".into(), 12.5)
            ]
        )));
        assert!(described.contains(&(
            vec![("user".into(), None)],
            vec![("consumer_byte_rate".into(), 2048.0)]
        )));
        // The compiled quotas follow.
        let quotas = quota::Quotas::new(quota::Windows::default());
        let configs = quotas.configs(&ctx.security.records());
        assert_eq!(
            configs
                .resolve(QuotaType::Produce, "alice", "app")
                .unwrap()
                .1,
            1024.0
        );
        assert_eq!(
            configs.resolve(QuotaType::Fetch, "zed", "x").unwrap().1,
            2048.0
        );
        // Removing every key removes the entity.
        let codes = alter(
            &ctx,
            vec![entry(
                alice_app,
                &[
                    ("producer_byte_rate", 0.0, true),
                    ("request_percentage", 0.0, true),
                ],
            )],
            false,
        )
        .await;
        assert_eq!(codes, vec![0]);
        assert_eq!(describe(&ctx).len(), 1);
        assert!(
            ctx.security
                .records()
                .get(quota::KIND, "users/alice/clients/app")
                .is_none()
        );
        // The same entity twice in one request: the second is refused.
        let twice = vec![
            entry(
                &[("user", Some("erin"))],
                &[("producer_byte_rate", 5.0, false)],
            ),
            entry(
                &[("user", Some("erin"))],
                &[("producer_byte_rate", 6.0, false)],
            ),
        ];
        assert_eq!(alter(&ctx, twice, false).await, vec![0, invalid]);
    }

    /// Alters of different keys of one entity at once, on two threads: while one change is
    /// being written (and fsynced), the others read the records it has not replaced yet. Every
    /// key must survive: a change conditional on what it read, read again on a conflict.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_alters_of_one_entity_lose_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = super::super::tests::context(dir.path());
        let keys = [
            "producer_byte_rate",
            "consumer_byte_rate",
            "request_percentage",
        ];
        let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
        let mut tasks = Vec::new();
        for user in &users {
            for (i, key) in keys.into_iter().enumerate() {
                let ctx = std::sync::Arc::clone(&ctx);
                let user = user.clone();
                tasks.push(tokio::spawn(async move {
                    let value = (i + 1) as f64 * 100.0;
                    let entity = [("user", Some(user.as_str()))];
                    alter(&ctx, vec![entry(&entity, &[(key, value, false)])], false).await
                }));
            }
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), vec![0]);
        }
        let records = ctx.security.records();
        for user in &users {
            let key = format!("users/{user}");
            let values = records
                .get(quota::KIND, &key)
                .and_then(|json| quota::parse_values(&key, json))
                .unwrap_or_default();
            assert_eq!(values.len(), keys.len(), "{user}: {values:?}");
        }
    }
}
