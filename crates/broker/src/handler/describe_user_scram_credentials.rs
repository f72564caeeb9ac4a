//! DescribeUserScramCredentials (KIP-554): which SCRAM mechanisms each user has a credential for,
//! and their iteration counts; never a salt or key.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use super::{Context, str_bytes};
use crate::security::SecurityRecords;
use crate::security::acl::{Access, AclOperation};
use crate::security::scram::{self, ScramCredential};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    if !access.check_cluster(AclOperation::Describe) {
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes("DESCRIBE on the cluster is needed")));
    }
    let wanted = request
        .users
        .map(|users| users.into_iter().map(|u| u.name.to_string()).collect());
    describe(&ctx.security.records(), wanted)
}

/// Every user's mechanisms and iterations, by user.
fn users(records: &SecurityRecords) -> BTreeMap<&str, Vec<CredentialInfo>> {
    let mut users: BTreeMap<&str, Vec<CredentialInfo>> = BTreeMap::new();
    for (key, json) in records.kind(scram::STORE_KIND) {
        let Some((mechanism, user)) = scram::parse_store_key(key) else {
            continue;
        };
        let Ok(credential) = ScramCredential::from_json(mechanism, json) else {
            continue;
        };
        users.entry(user).or_default().push(
            CredentialInfo::default()
                .with_mechanism(mechanism.kafka_type())
                .with_iterations(credential.iterations as i32),
        );
    }
    users
}

/// The answer for `wanted` users (`None` or empty: every user with a credential), as Kafka:
/// RESOURCE_NOT_FOUND for a user without any, DUPLICATE_RESOURCE for a user named twice.
fn describe(
    records: &SecurityRecords,
    wanted: Option<Vec<String>>,
) -> DescribeUserScramCredentialsResponse {
    let users = users(records);
    let results = match wanted.filter(|w| !w.is_empty()) {
        None => users
            .into_iter()
            .map(|(user, infos)| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(str_bytes(user))
                    .with_credential_infos(infos)
            })
            .collect(),
        Some(wanted) => {
            let mut seen = BTreeSet::new();
            let duplicates: BTreeSet<&String> =
                wanted.iter().filter(|u| !seen.insert(*u)).collect();
            let mut answered = BTreeSet::new();
            let mut results = Vec::new();
            for user in &wanted {
                if !answered.insert(user) {
                    continue;
                }
                let result =
                    DescribeUserScramCredentialsResult::default().with_user(str_bytes(user));
                results.push(if duplicates.contains(user) {
                    result
                        .with_error_code(ResponseError::DuplicateResource.code())
                        .with_error_message(Some(str_bytes(format!(
                            "Cannot describe SCRAM credentials for the same user twice in a single request: {user}"
                        ))))
                } else if let Some(infos) = users.get(user.as_str()) {
                    result.with_credential_infos(infos.clone())
                } else {
                    result
                        .with_error_code(ResponseError::ResourceNotFound.code())
                        .with_error_message(Some(str_bytes(format!(
                            "Attempt to describe a user credential that does not exist: {user}"
                        ))))
                });
            }
            results
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::scram::ScramMechanism;

    fn records() -> SecurityRecords {
        let mut records = SecurityRecords::default();
        let scram = records.kinds.entry(scram::STORE_KIND.into()).or_default();
        for (m, user, iterations) in [
            (ScramMechanism::Sha256, "alice", 4096),
            (ScramMechanism::Sha512, "alice", 8192),
            (ScramMechanism::Sha512, "bob", 5000),
        ] {
            let c = ScramCredential::new(m, "pw", iterations).unwrap();
            scram.insert(scram::store_key(m, user), c.to_json());
        }
        records
    }

    #[test]
    fn describes_every_user_or_the_ones_asked_with_kafkas_errors() {
        let records = records();
        let all = describe(&records, None);
        let summary: Vec<(String, Vec<(i8, i32)>)> = all
            .results
            .iter()
            .map(|r| {
                (
                    r.user.to_string(),
                    r.credential_infos
                        .iter()
                        .map(|i| (i.mechanism, i.iterations))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("alice".to_string(), vec![(1, 4096), (2, 8192)]),
                ("bob".to_string(), vec![(2, 5000)]),
            ]
        );
        let some = describe(
            &records,
            Some(vec![
                "bob".into(),
                "carol".into(),
                "alice".into(),
                "alice".into(),
            ]),
        );
        let codes: Vec<(String, i16)> = some
            .results
            .iter()
            .map(|r| (r.user.to_string(), r.error_code))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("bob".to_string(), 0),
                ("carol".to_string(), ResponseError::ResourceNotFound.code()),
                ("alice".to_string(), ResponseError::DuplicateResource.code()),
            ]
        );
        assert!(describe(&records, Some(Vec::new())).results.len() == 2);
    }
}
