//! Listeners as Kafka names them: `listeners=NAME://HOST:PORT,…`, each name mapped to a security
//! protocol by `listener.security.protocol.map`, `advertised.listeners` for what clients are told,
//! `inter.broker.listener.name` for the brokers' own connections and `controller.listener.names`
//! for the metadata quorum's. Parsing only: no socket is opened here.
//!
//! A bare `HOST:PORT` (the `--listen` of earlier releases) is a listener named `PLAINTEXT`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::session::SecurityProtocol;

/// `listener.security.protocol.map` when not set: each protocol's name is a listener name.
pub(crate) const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

/// Listeners at most (a limit on a list read from the command line).
const LISTENERS_MAX: usize = 64;

/// One `NAME://HOST:PORT` entry of `listeners` or `advertised.listeners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// The listener name, upper case (`PLAINTEXT`, `SSL`, `INTERNAL`, …).
    pub(crate) name: Arc<str>,
    /// Host or IP address; empty means every interface (as Kafka's `PLAINTEXT://:9092`).
    pub(crate) host: String,
    /// Port; 0 binds any free port.
    pub(crate) port: u16,
}

/// A listener to bind: its endpoint and the protocol its connections speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    /// Where to bind.
    pub(crate) endpoint: Endpoint,
    /// From `listener.security.protocol.map`.
    pub(crate) protocol: SecurityProtocol,
    /// From `advertised.listeners`; `None` advertises the bound address.
    pub(crate) advertised: Option<(String, u16)>,
}

impl Listener {
    /// The listener's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.endpoint.name
    }

    /// Whether its connections are TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.protocol.is_tls()
    }
}

/// Every listener setting, checked against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listeners {
    /// In the order given; the first is the one `--advertised` and `local_addr()` refer to.
    pub(crate) all: Vec<Listener>,
    /// `inter.broker.listener.name` (default: the first listener).
    pub(crate) inter_broker: Arc<str>,
    /// `controller.listener.names` (its first name) and that name's protocol; `None` when unset:
    /// the quorum's connections are plain TCP.
    pub(crate) controller: Option<(Arc<str>, SecurityProtocol)>,
}

impl Listeners {
    /// The listener named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Listener> {
        self.all.iter().find(|l| &*l.endpoint.name == name)
    }

    /// The listener other brokers connect to.
    pub(crate) fn inter_broker(&self) -> &Listener {
        self.get(&self.inter_broker)
            .expect("checked when parsed: inter.broker.listener.name is a listener")
    }
}

/// The raw listener settings, as given.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenerSettings<'a> {
    /// `listeners` (or `--listen`).
    pub(crate) listeners: &'a str,
    /// `listener.security.protocol.map`; empty means [`DEFAULT_PROTOCOL_MAP`].
    pub(crate) protocol_map: &'a str,
    /// `advertised.listeners`.
    pub(crate) advertised_listeners: &'a str,
    /// `--advertised HOST:PORT`: the first listener's advertised address when
    /// `advertised.listeners` does not name it.
    pub(crate) advertised: Option<&'a str>,
    /// `inter.broker.listener.name`.
    pub(crate) inter_broker_listener_name: &'a str,
    /// `controller.listener.names`.
    pub(crate) controller_listener_names: &'a str,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6; an empty host means every interface).
pub(crate) fn parse_host_port(value: &str) -> Result<(String, u16), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{value:?} has no valid port (0-65535)"))?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .ok_or_else(|| format!("{value:?}: unclosed '[' in the host"))?,
        None if host.contains(':') => {
            return Err(format!(
                "{value:?}: write an IPv6 host in brackets, [::1]:9092"
            ));
        }
        None => host,
    };
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{value:?} has an invalid host"));
    }
    Ok((host.to_string(), port))
}

/// Parses a list of `NAME://HOST:PORT` separated by commas; a bare `HOST:PORT` is named
/// `PLAINTEXT`. Names are unique, as are non-zero ports.
pub(crate) fn parse_endpoints(setting: &str, value: &str) -> Result<Vec<Endpoint>, String> {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = match entry.split_once("://") {
            Some((name, address)) => (name.trim().to_ascii_uppercase(), address),
            None => ("PLAINTEXT".to_string(), entry),
        };
        if !valid_name(&name) {
            return Err(format!(
                "{setting}: {entry:?} has an invalid listener name (letters, digits, '_' and '-')"
            ));
        }
        let (host, port) = parse_host_port(address).map_err(|e| format!("{setting}: {e}"))?;
        if endpoints.iter().any(|e| *e.name == *name) {
            return Err(format!("{setting}: listener name {name} is given twice"));
        }
        if port != 0 && endpoints.iter().any(|e| e.port == port && e.host == host) {
            return Err(format!("{setting}: {host}:{port} is given twice"));
        }
        if endpoints.len() == LISTENERS_MAX {
            return Err(format!("{setting}: more than {LISTENERS_MAX} listeners"));
        }
        endpoints.push(Endpoint {
            name: name.into(),
            host,
            port,
        });
    }
    Ok(endpoints)
}

/// Parses `listener.security.protocol.map`: `NAME:PROTOCOL` separated by commas.
pub(crate) fn parse_protocol_map(
    value: &str,
) -> Result<BTreeMap<String, SecurityProtocol>, String> {
    let value = if value.trim().is_empty() {
        DEFAULT_PROTOCOL_MAP
    } else {
        value
    };
    let mut map = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| format!("listener.security.protocol.map: {entry:?} {why}");
        let (name, protocol) = entry
            .split_once(':')
            .ok_or_else(|| bad("is not NAME:PROTOCOL"))?;
        let name = name.trim().to_ascii_uppercase();
        if !valid_name(&name) {
            return Err(bad("has an invalid listener name"));
        }
        let protocol = SecurityProtocol::parse(protocol.trim())
            .ok_or_else(|| bad("names no protocol of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"))?;
        if map.insert(name, protocol).is_some() {
            return Err(bad("maps a name given before"));
        }
    }
    Ok(map)
}

/// Checks the listener settings against each other.
pub(crate) fn parse(settings: &ListenerSettings<'_>) -> Result<Listeners, String> {
    let endpoints = parse_endpoints("listeners", settings.listeners)?;
    if endpoints.is_empty() {
        return Err("listeners: no listener given".into());
    }
    let map = parse_protocol_map(settings.protocol_map)?;
    let protocol_of = |name: &str, setting: &str| {
        map.get(name).copied().ok_or_else(|| {
            format!(
                "{setting}: listener {name} has no protocol in listener.security.protocol.map \
                 (add {name}:SSL, {name}:PLAINTEXT, …)"
            )
        })
    };
    let advertised = parse_endpoints("advertised.listeners", settings.advertised_listeners)?;
    for a in &advertised {
        if !endpoints.iter().any(|e| e.name == a.name) {
            return Err(format!(
                "advertised.listeners: {} is not a listener of listeners",
                a.name
            ));
        }
        if a.port == 0 || a.host.is_empty() {
            return Err(format!(
                "advertised.listeners: {} needs a host and a non-zero port",
                a.name
            ));
        }
    }
    let first_advertised = settings
        .advertised
        .map(|a| parse_host_port(a.trim()).map_err(|e| format!("advertised address: {e}")))
        .transpose()?;
    let mut all = Vec::with_capacity(endpoints.len());
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let protocol = protocol_of(&endpoint.name, "listeners")?;
        let advertised = advertised
            .iter()
            .find(|a| a.name == endpoint.name)
            .map(|a| (a.host.clone(), a.port))
            .or_else(|| first_advertised.clone().filter(|_| i == 0));
        all.push(Listener {
            endpoint,
            protocol,
            advertised,
        });
    }
    let inter_broker = match settings.inter_broker_listener_name.trim() {
        "" => Arc::clone(all[0].name()),
        name => {
            let name = name.to_ascii_uppercase();
            all.iter()
                .find(|l| **l.name() == *name)
                .map(|l| Arc::clone(l.name()))
                .ok_or_else(|| {
                    format!("inter.broker.listener.name: {name} is not a listener of listeners")
                })?
        }
    };
    let controller = match settings
        .controller_listener_names
        .split(',')
        .map(str::trim)
        .find(|n| !n.is_empty())
    {
        None => None,
        Some(name) => {
            let name = name.to_ascii_uppercase();
            let protocol = protocol_of(&name, "controller.listener.names")?;
            if protocol.is_sasl() {
                return Err(format!(
                    "controller.listener.names: {name} is {protocol}; the metadata quorum \
                     speaks PLAINTEXT or SSL (mutual TLS)"
                ));
            }
            Some((Arc::from(name.as_str()), protocol))
        }
    };
    Ok(Listeners {
        all,
        inter_broker,
        controller,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listeners: &str) -> ListenerSettings<'_> {
        ListenerSettings {
            listeners,
            ..ListenerSettings::default()
        }
    }

    #[test]
    fn a_bare_address_is_one_plaintext_listener() {
        let parsed = parse(&settings("127.0.0.1:9092")).unwrap();
        assert_eq!(parsed.all.len(), 1);
        let l = &parsed.all[0];
        assert_eq!(&**l.name(), "PLAINTEXT");
        assert_eq!(l.protocol, SecurityProtocol::Plaintext);
        assert_eq!(
            (l.endpoint.host.as_str(), l.endpoint.port),
            ("127.0.0.1", 9092)
        );
        assert_eq!(&*parsed.inter_broker, "PLAINTEXT");
        assert!(parsed.controller.is_none());
    }

    #[test]
    fn kafka_lists_map_names_to_protocols() {
        let parsed = parse(&ListenerSettings {
            listeners: "SASL_SSL://0.0.0.0:9093, PLAINTEXT://127.0.0.1:9092,internal://:9094,v6://[::1]:0",
            protocol_map: "SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT,INTERNAL:SSL,V6:PLAINTEXT,CONTROLLER:SSL",
            advertised_listeners: "INTERNAL://broker-1.internal:19094",
            advertised: Some("public.example:443"),
            inter_broker_listener_name: "internal",
            controller_listener_names: "CONTROLLER",
        })
        .unwrap();
        let names: Vec<_> = parsed.all.iter().map(|l| &**l.name()).collect();
        assert_eq!(names, ["SASL_SSL", "PLAINTEXT", "INTERNAL", "V6"]);
        assert_eq!(parsed.all[0].protocol, SecurityProtocol::SaslSsl);
        assert!(parsed.all[0].is_tls() && !parsed.all[1].is_tls());
        assert_eq!(
            parsed.all[0].advertised,
            Some(("public.example".into(), 443)),
            "--advertised applies to the first listener"
        );
        assert_eq!(parsed.all[1].advertised, None);
        let internal = parsed.get("INTERNAL").unwrap();
        assert_eq!(internal.endpoint.host, "");
        assert_eq!(internal.protocol, SecurityProtocol::Ssl);
        assert_eq!(
            internal.advertised,
            Some(("broker-1.internal".into(), 19094))
        );
        assert_eq!(parsed.all[3].endpoint.host, "::1");
        assert_eq!(&**parsed.inter_broker().name(), "INTERNAL");
        assert_eq!(
            parsed.controller,
            Some((Arc::from("CONTROLLER"), SecurityProtocol::Ssl))
        );
    }

    #[test]
    fn the_default_map_knows_the_four_protocols() {
        let parsed = parse(&settings(
            "SSL://h:1,SASL_SSL://h:2,SASL_PLAINTEXT://h:3,PLAINTEXT://h:4",
        ))
        .unwrap();
        let protocols: Vec<_> = parsed.all.iter().map(|l| l.protocol).collect();
        assert_eq!(
            protocols,
            [
                SecurityProtocol::Ssl,
                SecurityProtocol::SaslSsl,
                SecurityProtocol::SaslPlaintext,
                SecurityProtocol::Plaintext
            ]
        );
    }

    #[test]
    fn bad_lists_get_errors_that_say_what_is_wrong() {
        let err = |s: ListenerSettings<'_>| parse(&s).unwrap_err();
        assert!(err(settings("")).contains("no listener"));
        assert!(err(settings("SSL://h")).contains("not HOST:PORT"));
        assert!(err(settings("SSL://h:99999")).contains("port"));
        assert!(err(settings("SSL://h:1,SSL://h:2")).contains("twice"));
        assert!(err(settings("SSL://h:1,PLAINTEXT://h:1")).contains("twice"));
        assert!(err(settings("S SL://h:1")).contains("invalid listener name"));
        assert!(err(settings("::1:9092")).contains("brackets"));
        assert!(err(settings("INTERNAL://h:1")).contains("listener.security.protocol.map"));
        let e = err(ListenerSettings {
            protocol_map: "INTERNAL:TLS",
            ..settings("INTERNAL://h:1")
        });
        assert!(e.contains("no protocol of"), "{e}");
        let e = err(ListenerSettings {
            inter_broker_listener_name: "OTHER",
            ..settings("SSL://h:1")
        });
        assert!(e.contains("inter.broker.listener.name"), "{e}");
        let e = err(ListenerSettings {
            advertised_listeners: "PLAINTEXT://h:1",
            ..settings("SSL://h:1")
        });
        assert!(e.contains("not a listener"), "{e}");
        let e = err(ListenerSettings {
            controller_listener_names: "SASL_SSL",
            ..settings("SSL://h:1")
        });
        assert!(e.contains("metadata quorum"), "{e}");
        let many: Vec<String> = (0..=LISTENERS_MAX).map(|i| format!("L{i}://h:0")).collect();
        let map: Vec<String> = (0..=LISTENERS_MAX).map(|i| format!("L{i}:SSL")).collect();
        let (many, map) = (many.join(","), map.join(","));
        let e = err(ListenerSettings {
            protocol_map: &map,
            ..settings(&many)
        });
        assert!(e.contains("more than"), "{e}");
    }
}
