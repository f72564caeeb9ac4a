//! AlterUserScramCredentials (KIP-554): creates, replaces and deletes users' SCRAM credentials.
//! The client sends the salt and the salted password (never the password); the broker derives
//! StoredKey and ServerKey and stores those. Each user's alterations are all applied or none, with
//! Kafka's errors: UNSUPPORTED_SASL_MECHANISM, UNACCEPTABLE_CREDENTIAL (iterations out of
//! 4096..=16384, an empty name or salt), DUPLICATE_RESOURCE (one user and mechanism twice),
//! RESOURCE_NOT_FOUND (deleting a credential that does not exist).

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation};
use crate::security::scram::{self, CredentialError, ScramCredential, ScramMechanism};
use crate::security::{SecurityChange, SecurityRecords, SecurityStore};

/// What a request asks, checked: the answer of each user refused, and the changes of the others.
pub(super) struct Pending {
    security: std::sync::Arc<SecurityStore>,
    /// Users in request order, with their error when refused.
    users: Vec<(String, Option<(ResponseError, String)>)>,
    changes: Vec<SecurityChange>,
}

/// Needs ALTER on the cluster: else every user answers CLUSTER_AUTHORIZATION_FAILED.
pub(super) fn start(
    ctx: &Context,
    access: &Access,
    request: AlterUserScramCredentialsRequest,
) -> Pending {
    let (mut users, mut changes) = plan(&ctx.security.records(), &request);
    if !access.check_cluster(AclOperation::Alter) {
        changes.clear();
        for (_, error) in &mut users {
            *error = Some((
                ResponseError::ClusterAuthorizationFailed,
                "ALTER on the cluster is needed".to_string(),
            ));
        }
    }
    Pending {
        security: std::sync::Arc::clone(&ctx.security),
        users,
        changes,
    }
}

/// Applies the accepted changes at once; durable (or replicated) before the answer.
pub(super) async fn finish(pending: Pending) -> AlterUserScramCredentialsResponse {
    let Pending {
        security,
        mut users,
        changes,
    } = pending;
    if !changes.is_empty()
        && let Err(e) = security.change(changes).await
    {
        tracing::warn!(error = %e, "storing SCRAM credentials failed");
        for (_, error) in users.iter_mut().filter(|(_, error)| error.is_none()) {
            *error = Some((ResponseError::UnknownServerError, e.to_string()));
        }
    }
    let results = users
        .into_iter()
        .map(|(user, error)| {
            let result = AlterUserScramCredentialsResult::default().with_user(str_bytes(user));
            match error {
                None => result,
                Some((code, message)) => result
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(message))),
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

type UserResults = Vec<(String, Option<(ResponseError, String)>)>;

fn plan(
    records: &SecurityRecords,
    request: &AlterUserScramCredentialsRequest,
) -> (UserResults, Vec<SecurityChange>) {
    // (user, mechanism code) in request order: deletions first, as Kafka lists them.
    let alterations: Vec<(&str, i8)> = request
        .deletions
        .iter()
        .map(|d| (d.name.as_str(), d.mechanism))
        .chain(
            request
                .upsertions
                .iter()
                .map(|u| (u.name.as_str(), u.mechanism)),
        )
        .collect();
    let mut seen = BTreeSet::new();
    let duplicated: BTreeSet<(&str, i8)> = alterations
        .iter()
        .copied()
        .filter(|a| !seen.insert(*a))
        .collect();
    let mut errors: BTreeMap<&str, (ResponseError, String)> = BTreeMap::new();
    let mut changes: BTreeMap<&str, Vec<SecurityChange>> = BTreeMap::new();
    for deletion in &request.deletions {
        let user = deletion.name.as_str();
        match check(user, deletion.mechanism, &duplicated) {
            Err(refusal) => {
                errors.entry(user).or_insert(refusal);
            }
            Ok(mechanism) => {
                let key = scram::store_key(mechanism, user);
                if records.get(scram::STORE_KIND, &key).is_none() {
                    errors.entry(user).or_insert((
                        ResponseError::ResourceNotFound,
                        format!("Attempt to delete a user credential that does not exist: {user} {mechanism}"),
                    ));
                    continue;
                }
                changes.entry(user).or_default().push(SecurityChange {
                    kind: scram::STORE_KIND.into(),
                    key,
                    value: None,
                });
            }
        }
    }
    for upsertion in &request.upsertions {
        let user = upsertion.name.as_str();
        let mechanism = match check(user, upsertion.mechanism, &duplicated) {
            Ok(mechanism) => mechanism,
            Err(refusal) => {
                errors.entry(user).or_insert(refusal);
                continue;
            }
        };
        let credential = ScramCredential::from_salted_password(
            mechanism,
            upsertion.salt.to_vec(),
            &upsertion.salted_password,
            i64::from(upsertion.iterations),
        );
        match credential {
            Ok(credential) => changes.entry(user).or_default().push(SecurityChange {
                kind: scram::STORE_KIND.into(),
                key: scram::store_key(mechanism, user),
                value: Some(credential.to_json()),
            }),
            Err(e) => {
                errors
                    .entry(user)
                    .or_insert((ResponseError::UnacceptableCredential, unacceptable(&e)));
            }
        }
    }
    let mut answered = BTreeSet::new();
    let mut users = Vec::new();
    let mut accepted = Vec::new();
    for (user, _) in alterations {
        if !answered.insert(user) {
            continue;
        }
        let error = errors.get(user).cloned();
        if error.is_none() {
            accepted.extend(changes.remove(user).unwrap_or_default());
        }
        users.push((user.to_string(), error));
    }
    (users, accepted)
}

/// Kafka's words for a credential refused.
fn unacceptable(error: &CredentialError) -> String {
    match error {
        CredentialError::Iterations { iterations }
            if *iterations < i64::from(scram::ITERATIONS_MIN) =>
        {
            format!(
                "Too few iterations: {iterations} (at least {})",
                scram::ITERATIONS_MIN
            )
        }
        CredentialError::Iterations { iterations } => {
            format!(
                "Too many iterations: {iterations} (at most {})",
                scram::ITERATIONS_MAX
            )
        }
        CredentialError::Invalid(why) => why.clone(),
    }
}

/// The checks common to deletions and upsertions: a user name, a known mechanism, not twice.
fn check(
    user: &str,
    mechanism: i8,
    duplicated: &BTreeSet<(&str, i8)>,
) -> Result<ScramMechanism, (ResponseError, String)> {
    if user.is_empty() {
        return Err((
            ResponseError::UnacceptableCredential,
            "Username must not be empty".into(),
        ));
    }
    let Some(known) = ScramMechanism::from_kafka_type(mechanism) else {
        return Err((
            ResponseError::UnsupportedSaslMechanism,
            format!("Unknown SCRAM mechanism {mechanism}"),
        ));
    };
    if duplicated.contains(&(user, mechanism)) {
        return Err((
            ResponseError::DuplicateResource,
            "A user credential cannot be altered twice in the same request".into(),
        ));
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::alter_user_scram_credentials_request::{
        ScramCredentialDeletion, ScramCredentialUpsertion,
    };

    fn upsert(user: &str, mechanism: i8, iterations: i32) -> ScramCredentialUpsertion {
        let m = ScramMechanism::from_kafka_type(mechanism).unwrap_or(ScramMechanism::Sha256);
        let salt = b"salt".to_vec();
        ScramCredentialUpsertion::default()
            .with_name(str_bytes(user))
            .with_mechanism(mechanism)
            .with_iterations(iterations)
            .with_salted_password(m.salted_password(b"pw", &salt, 4096).into())
            .with_salt(salt.into())
    }

    fn delete(user: &str, mechanism: i8) -> ScramCredentialDeletion {
        ScramCredentialDeletion::default()
            .with_name(str_bytes(user))
            .with_mechanism(mechanism)
    }

    fn codes(users: &UserResults) -> Vec<(&str, i16)> {
        users
            .iter()
            .map(|(u, e)| (u.as_str(), e.as_ref().map_or(0, |(c, _)| c.code())))
            .collect()
    }

    #[test]
    fn each_users_alterations_are_checked_as_kafka_does() {
        let mut records = SecurityRecords::default();
        records
            .kinds
            .entry(scram::STORE_KIND.into())
            .or_default()
            .insert(
                scram::store_key(ScramMechanism::Sha512, "old"),
                ScramCredential::new(ScramMechanism::Sha512, "x", 4096)
                    .unwrap()
                    .to_json(),
            );
        let request = AlterUserScramCredentialsRequest::default()
            .with_deletions(vec![delete("old", 2), delete("ghost", 1)])
            .with_upsertions(vec![
                upsert("alice", 1, 8192),
                upsert("alice", 2, 4096),
                upsert("weak", 1, 4095),
                upsert("greedy", 1, 16385),
                upsert("odd", 3, 4096),
                upsert("twice", 1, 4096),
                upsert("twice", 1, 5000),
                upsert("", 1, 4096),
                // A failure for one of a user's alterations refuses all of them.
                upsert("ghost", 2, 4096),
            ]);
        let (users, changes) = plan(&records, &request);
        assert_eq!(
            codes(&users),
            vec![
                ("old", 0),
                ("ghost", ResponseError::ResourceNotFound.code()),
                ("alice", 0),
                ("weak", ResponseError::UnacceptableCredential.code()),
                ("greedy", ResponseError::UnacceptableCredential.code()),
                ("odd", ResponseError::UnsupportedSaslMechanism.code()),
                ("twice", ResponseError::DuplicateResource.code()),
                ("", ResponseError::UnacceptableCredential.code()),
            ]
        );
        let keys: Vec<(&str, bool)> = changes
            .iter()
            .map(|c| (c.key.as_str(), c.value.is_some()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("SCRAM-SHA-512/old", false),
                ("SCRAM-SHA-256/alice", true),
                ("SCRAM-SHA-512/alice", true),
            ]
        );
        // What is stored is the derived credential: the client's password verifies against it.
        let stored = ScramCredential::from_json(
            ScramMechanism::Sha256,
            changes[1].value.as_deref().unwrap(),
        )
        .unwrap();
        assert_eq!(stored.iterations, 8192);
        assert!(!changes[1].value.as_deref().unwrap().contains("pw"));
        let message = &users[3].1.as_ref().unwrap().1;
        assert!(message.starts_with("Too few iterations"), "{message}");
    }
}
