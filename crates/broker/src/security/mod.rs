//! Security: where credentials, ACL bindings and client quotas are kept ([`store`]), how
//! listeners are secured (TLS), how connections authenticate (SASL) and how requests are
//! authorized (ACLs) and throttled (quotas).

pub mod acl;
pub mod client;
mod der;
pub mod listener;
pub mod quota;
pub mod sasl;
pub mod scram;
pub mod store;
pub mod tls;
pub mod users;

pub use store::{
    LocalSecurityStore, SecurityChange, SecurityExpectation, SecurityRecords, SecurityStore,
};
