//! SCRAM users of a stopped broker's data folder, managed offline (`strata users … --data-dir`):
//! under the data folder's lock, so never while a broker runs there, written through the
//! [`LocalSecurityStore`]. This is how the first super user is created before the first start; a
//! cluster broker imports the records into the replicated metadata when it starts.

use std::collections::BTreeMap;
use std::path::Path;

use super::LocalSecurityStore;
use super::scram::{self, ScramCredential, ScramMechanism};
use crate::dir_lock::DataDirLock;
use crate::error::{Error, Result};
use crate::security::SecurityChange;

/// A user's credentials as listed: mechanism and iterations, never a secret.
pub type UserListing = BTreeMap<String, Vec<(ScramMechanism, u32)>>;

/// The users of a data folder, locked for this process while the value lives.
#[derive(Debug)]
pub struct OfflineUsers {
    store: LocalSecurityStore,
    _lock: DataDirLock,
}

impl OfflineUsers {
    /// Locks `data_dir` (creating it when needed). Refused with a message saying so while a
    /// broker runs on the folder: use `--bootstrap-server` then.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let lock = DataDirLock::acquire(data_dir).map_err(|e| match e {
            Error::DataDirInUse { path, pid } => Error::InvalidConfig(format!(
                "a broker is running on {}{}: change users through it with --bootstrap-server, \
                 or stop it first",
                path.display(),
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            )),
            other => other,
        })?;
        Ok(Self {
            store: LocalSecurityStore::open(data_dir),
            _lock: lock,
        })
    }

    /// Creates or replaces `user`'s credential for `mechanism`, salted with fresh randomness.
    pub fn add(
        &self,
        mechanism: ScramMechanism,
        user: &str,
        password: &str,
        iterations: u32,
    ) -> Result<()> {
        if user.is_empty() {
            return Err(Error::InvalidConfig("the user name is empty".into()));
        }
        let credential = ScramCredential::new(mechanism, password, iterations)
            .map_err(|e| Error::InvalidConfig(format!("{mechanism} credential: {e}")))?;
        self.store.apply(&[SecurityChange {
            kind: scram::STORE_KIND.into(),
            key: scram::store_key(mechanism, user),
            value: Some(credential.to_json()),
        }])?;
        Ok(())
    }

    /// Removes `user`'s credential for `mechanism`, or for every mechanism; the mechanisms
    /// removed (an error when there was none).
    pub fn remove(
        &self,
        user: &str,
        mechanism: Option<ScramMechanism>,
    ) -> Result<Vec<ScramMechanism>> {
        let listing = self.list()?;
        let present = listing.get(user).cloned().unwrap_or_default();
        let removed: Vec<ScramMechanism> = present
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| mechanism.is_none_or(|wanted| wanted == *m))
            .collect();
        if removed.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "user {user:?} has no {} credential",
                mechanism.map_or("SCRAM", ScramMechanism::name)
            )));
        }
        let changes: Vec<SecurityChange> = removed
            .iter()
            .map(|m| SecurityChange {
                kind: scram::STORE_KIND.into(),
                key: scram::store_key(*m, user),
                value: None,
            })
            .collect();
        self.store.apply(&changes)?;
        Ok(removed)
    }

    /// Every user with its mechanisms and iterations.
    pub fn list(&self) -> Result<UserListing> {
        let kinds = self.store.load()?;
        let mut users = UserListing::new();
        for (key, json) in kinds.get(scram::STORE_KIND).into_iter().flatten() {
            let Some((mechanism, user)) = scram::parse_store_key(key) else {
                continue;
            };
            let credential = ScramCredential::from_json(mechanism, json)
                .map_err(|e| Error::Metadata(format!("the stored credential {key}: {e}")))?;
            users
                .entry(user.to_string())
                .or_default()
                .push((mechanism, credential.iterations));
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_listed_and_removed_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let users = OfflineUsers::open(&data).unwrap();
        users
            .add(ScramMechanism::Sha256, "admin", "pw", 8192)
            .unwrap();
        users
            .add(ScramMechanism::Sha512, "admin", "pw", 4096)
            .unwrap();
        users
            .add(ScramMechanism::Sha512, "app", "pw2", 4096)
            .unwrap();
        assert!(
            users
                .add(ScramMechanism::Sha512, "weak", "pw", 100)
                .is_err()
        );
        assert!(users.add(ScramMechanism::Sha512, "", "pw", 4096).is_err());
        let listing = users.list().unwrap();
        assert_eq!(
            listing.get("admin").unwrap(),
            &vec![
                (ScramMechanism::Sha256, 8192),
                (ScramMechanism::Sha512, 4096)
            ]
        );
        // A second holder (a broker starting) is refused while the users are open.
        let err = OfflineUsers::open(&data).unwrap_err().to_string();
        assert!(err.contains("a broker is running on"), "{err}");
        assert_eq!(
            users.remove("admin", Some(ScramMechanism::Sha512)).unwrap(),
            vec![ScramMechanism::Sha512]
        );
        assert!(users.remove("admin", Some(ScramMechanism::Sha512)).is_err());
        assert_eq!(
            users.remove("app", None).unwrap(),
            vec![ScramMechanism::Sha512]
        );
        drop(users);
        let again = OfflineUsers::open(&data).unwrap();
        let listing = again.list().unwrap();
        assert_eq!(listing.keys().collect::<Vec<_>>(), vec!["admin"]);
        // The file holds the credential, never the password.
        let file = std::fs::read_to_string(data.join("meta/security.json")).unwrap();
        assert!(file.contains("SCRAM-SHA-256/admin") && !file.contains("\"pw\""));
    }
}
