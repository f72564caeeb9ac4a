//! DescribeClientQuotas (KIP-546): the client quotas whose entities match a filter, as
//! `kafka-configs --describe --entity-type users|clients` asks.
//!
//! A filter component names an entity type and matches an exact name (match type 0), the
//! default entity (1) or any entity of that type (2); `strict` keeps only entities with no
//! other entity type. Errors as Kafka's `ClientQuotasImage.describe`: INVALID_REQUEST for a bad
//! filter, UNSUPPORTED_VERSION for an unknown entity type.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::{DescribeClientQuotasRequest, DescribeClientQuotasResponse};

use super::{Context, str_bytes};
use crate::security::acl::{Access, AclOperation};
use crate::security::quota::{self, CLIENT_ID, Entity, IP, USER};

/// Kafka's match types of a filter component.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

/// What one component asks of an entity's name of its type.
#[derive(Debug, PartialEq)]
enum Wanted {
    /// This name exactly (`None`: the default entity).
    Exactly(Option<String>),
    /// Any name, the default included.
    Any,
}

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    request: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    if !access.check_cluster(AclOperation::DescribeConfigs) {
        return DescribeClientQuotasResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes("DESCRIBE_CONFIGS on the cluster is needed")));
    }
    let filter = match parse_filter(&request) {
        Ok(filter) => filter,
        Err((code, message)) => {
            return DescribeClientQuotasResponse::default()
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(message)));
        }
    };
    let records = ctx.security.records();
    let entries = records
        .kind(quota::KIND)
        .filter_map(|(key, json)| Some((Entity::from_key(key)?, quota::parse_values(key, json)?)))
        .filter(|(entity, _)| matches(entity, &filter, request.strict))
        .map(|(entity, values)| entry(&entity, &values))
        .collect();
    DescribeClientQuotasResponse::default().with_entries(Some(entries))
}

type Filter = Vec<(String, Wanted)>;

fn parse_filter(request: &DescribeClientQuotasRequest) -> Result<Filter, (ResponseError, String)> {
    let invalid = |m: String| (ResponseError::InvalidRequest, m);
    let mut filter: Filter = Vec::with_capacity(request.components.len());
    for component in &request.components {
        let kind = component.entity_type.as_str();
        if kind.is_empty() {
            return Err(invalid("Invalid empty entity type.".into()));
        }
        if filter.iter().any(|(k, _)| k == kind) {
            return Err(invalid(format!(
                "Entity type {kind} cannot appear more than once in the filter."
            )));
        }
        if ![USER, CLIENT_ID, IP].contains(&kind) {
            return Err((
                ResponseError::UnsupportedVersion,
                format!("Unsupported entity type {kind}"),
            ));
        }
        let name = component._match.as_ref().map(|m| m.to_string());
        let wanted = match (component.match_type, name) {
            (MATCH_EXACT, Some(name)) => Wanted::Exactly(Some(name)),
            (MATCH_EXACT, None) => {
                return Err(invalid(
                    "Request specified MATCH_TYPE_EXACT, but set match string to null.".into(),
                ));
            }
            (MATCH_DEFAULT, None) => Wanted::Exactly(None),
            (MATCH_SPECIFIED, None) => Wanted::Any,
            (MATCH_DEFAULT | MATCH_SPECIFIED, Some(_)) => {
                return Err(invalid(format!(
                    "Request specified match type {}, but also specified a match string.",
                    component.match_type
                )));
            }
            (other, _) => return Err(invalid(format!("Unknown match type {other}"))),
        };
        filter.push((kind.to_string(), wanted));
    }
    let has = |k: &str| filter.iter().any(|(kind, _)| kind == k);
    if has(IP) && (has(USER) || has(CLIENT_ID)) {
        return Err(invalid(
            "Invalid entity filter component combination. IP filter component should not be \
             used with user or clientId filter component."
                .into(),
        ));
    }
    Ok(filter)
}

fn matches(entity: &Entity, filter: &Filter, strict: bool) -> bool {
    let parts = entity.to_wire();
    if strict && parts.len() != filter.len() {
        return false;
    }
    filter.iter().all(|(kind, wanted)| {
        let Some((_, name)) = parts.iter().find(|(k, _)| k == kind) else {
            return false;
        };
        match wanted {
            Wanted::Any => true,
            Wanted::Exactly(want) => want.as_deref() == *name,
        }
    })
}

fn entry(entity: &Entity, values: &quota::Values) -> EntryData {
    EntryData::default()
        .with_entity(
            entity
                .to_wire()
                .into_iter()
                .map(|(kind, name)| {
                    EntityData::default()
                        .with_entity_type(str_bytes(kind))
                        .with_entity_name(name.map(str_bytes))
                })
                .collect(),
        )
        .with_values(
            values
                .iter()
                .map(|(key, &value)| {
                    ValueData::default()
                        .with_key(str_bytes(key.clone()))
                        .with_value(value)
                })
                .collect(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::quota::Name;
    use kafka_protocol::messages::describe_client_quotas_request::ComponentData;

    fn component(kind: &str, match_type: i8, name: Option<&str>) -> ComponentData {
        ComponentData::default()
            .with_entity_type(str_bytes(kind))
            .with_match_type(match_type)
            .with_match(name.map(str_bytes))
    }

    fn request(components: Vec<ComponentData>, strict: bool) -> DescribeClientQuotasRequest {
        DescribeClientQuotasRequest::default()
            .with_components(components)
            .with_strict(strict)
    }

    fn entity(user: Option<Option<&str>>, client: Option<Option<&str>>) -> Entity {
        let name = |n: Option<&str>| n.map_or(Name::Default, |n| Name::Is(n.into()));
        Entity {
            user: user.map(name),
            client_id: client.map(name),
        }
    }

    #[test]
    fn filters_match_as_kafka_s() {
        let alice = entity(Some(Some("alice")), None);
        let alice_app = entity(Some(Some("alice")), Some(Some("app")));
        let default_user = entity(Some(None), None);
        let app = entity(None, Some(Some("app")));
        let all = [&alice, &alice_app, &default_user, &app];
        let select = |components: Vec<ComponentData>, strict: bool| -> Vec<&Entity> {
            let filter = parse_filter(&request(components, strict)).unwrap();
            all.iter()
                .copied()
                .filter(|e| matches(e, &filter, strict))
                .collect()
        };
        assert_eq!(
            select(vec![component(USER, MATCH_EXACT, Some("alice"))], false),
            vec![&alice, &alice_app]
        );
        assert_eq!(
            select(vec![component(USER, MATCH_EXACT, Some("alice"))], true),
            vec![&alice]
        );
        assert_eq!(
            select(vec![component(USER, MATCH_DEFAULT, None)], false),
            vec![&default_user]
        );
        assert_eq!(
            select(vec![component(USER, MATCH_SPECIFIED, None)], true),
            vec![&alice, &default_user]
        );
        assert_eq!(
            select(vec![component(CLIENT_ID, MATCH_SPECIFIED, None)], false),
            vec![&alice_app, &app]
        );
        assert_eq!(select(vec![], false).len(), 4);
        assert!(select(vec![], true).is_empty());
    }

    #[test]
    fn bad_filters_are_refused_with_kafka_s_errors() {
        let code = |components: Vec<ComponentData>| {
            parse_filter(&request(components, false)).unwrap_err().0
        };
        assert_eq!(
            code(vec![component("", 0, Some("a"))]),
            ResponseError::InvalidRequest
        );
        assert_eq!(
            code(vec![component("group", 2, None)]),
            ResponseError::UnsupportedVersion
        );
        assert_eq!(
            code(vec![component(USER, MATCH_EXACT, None)]),
            ResponseError::InvalidRequest
        );
        assert_eq!(
            code(vec![component(USER, MATCH_DEFAULT, Some("a"))]),
            ResponseError::InvalidRequest
        );
        assert_eq!(
            code(vec![component(USER, 7, None)]),
            ResponseError::InvalidRequest
        );
        assert_eq!(
            code(vec![component(USER, 2, None), component(USER, 1, None)]),
            ResponseError::InvalidRequest
        );
        assert_eq!(
            code(vec![component(USER, 2, None), component(IP, 2, None)]),
            ResponseError::InvalidRequest
        );
    }
}
