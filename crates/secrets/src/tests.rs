use super::*;

fn store() -> (tempfile::TempDir, SecretStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SecretStore::open(dir.path()).unwrap();
    (dir, s)
}

#[test]
fn versions_number_up_and_latest_is_the_highest_enabled() {
    let (_d, s) = store();
    s.create("p", "db", BTreeMap::new()).unwrap();
    assert_eq!(s.add_version("p", "db", b"one", None).unwrap().version, 1);
    assert_eq!(
        s.add_version("p", "db", b"two", Some(crc32c::crc32c(b"two")))
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        s.access("p", "db", VersionRef::Latest).unwrap(),
        (2, b"two".to_vec())
    );
    assert_eq!(
        s.access("p", "db", VersionRef::Number(1)).unwrap(),
        (1, b"one".to_vec())
    );
    s.set_enabled("p", "db", 2, false).unwrap();
    assert_eq!(s.access("p", "db", VersionRef::Latest).unwrap().0, 1);
    let e = s.access("p", "db", VersionRef::Number(2)).unwrap_err();
    assert!(matches!(e, SecretsError::FailedPrecondition(_)), "{e}");
    assert!(e.to_string().contains("DISABLED"), "{e}");
    s.set_enabled("p", "db", 2, true).unwrap();
    s.destroy("p", "db", 2).unwrap();
    assert_eq!(s.access("p", "db", VersionRef::Latest).unwrap().0, 1);
    assert!(s.set_enabled("p", "db", 2, true).is_err());
    let states: Vec<_> = s
        .versions("p", "db")
        .unwrap()
        .iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(
        states,
        [(2, VersionState::Destroyed), (1, VersionState::Enabled)]
    );
    // A destroyed version keeps its number: the next one is 3.
    assert_eq!(s.add_version("p", "db", b"three", None).unwrap().version, 3);
    s.set_enabled("p", "db", 1, false).unwrap();
    s.set_enabled("p", "db", 3, false).unwrap();
    assert!(matches!(
        s.check("p", "db", VersionRef::Latest),
        Err(SecretsError::FailedPrecondition(_))
    ));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (_d, s) = store();
    assert!(matches!(
        s.create("p", "a/b", BTreeMap::new()),
        Err(SecretsError::Invalid(_))
    ));
    assert!(matches!(
        s.add_version("p", "none", b"x", None),
        Err(SecretsError::NotFound(_))
    ));
    s.create("p", "k", BTreeMap::new()).unwrap();
    assert!(matches!(
        s.create("p", "k", BTreeMap::new()),
        Err(SecretsError::AlreadyExists(_))
    ));
    let big = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        s.add_version("p", "k", &big, None),
        Err(SecretsError::Invalid(_))
    ));
    assert!(s
        .add_version("p", "k", &big[..MAX_PAYLOAD_BYTES], None)
        .is_ok());
    let e = s.add_version("p", "k", b"abc", Some(1)).unwrap_err();
    assert!(e.to_string().contains("CRC32C"), "{e}");
    assert_eq!(s.versions("p", "k").unwrap().len(), 1);
    assert!(matches!(
        s.access("p", "k", VersionRef::Number(9)),
        Err(SecretsError::NotFound(_))
    ));
    // Projects do not see each other's secrets.
    assert!(matches!(s.get("q", "k"), Err(SecretsError::NotFound(_))));
    let mut labels = BTreeMap::new();
    labels.insert("Env".to_string(), "x".to_string());
    assert!(s.create("p", "l", labels).is_err());
    assert!(matches!(s.get("p", "l"), Err(SecretsError::NotFound(_))));
}

#[test]
fn values_are_encrypted_at_rest_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let value = b"hunter2-plaintext-marker";
    {
        let s = SecretStore::open(dir.path()).unwrap();
        s.create("p", "pw", BTreeMap::new()).unwrap();
        s.add_version("p", "pw", value, None).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["secrets.key", "secrets.db"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(value.len()).any(|w| w == value));
    }
    let s = SecretStore::open(dir.path()).unwrap();
    assert_eq!(s.access("p", "pw", VersionRef::Latest).unwrap().1, value);
    // Another key does not decrypt it.
    std::fs::remove_file(dir.path().join("secrets.key")).unwrap();
    let other = SecretStore::open(dir.path()).unwrap();
    let e = other.access("p", "pw", VersionRef::Latest).unwrap_err();
    assert!(matches!(e, SecretsError::Crypto(_)), "{e}");
}

#[test]
fn version_refs() {
    assert_eq!(VersionRef::parse("latest").unwrap(), VersionRef::Latest);
    assert_eq!(VersionRef::parse("12").unwrap(), VersionRef::Number(12));
    for bad in ["0", "-1", "01", "+1", "x", ""] {
        assert!(VersionRef::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn deleting_a_secret_deletes_its_versions() {
    let (_d, s) = store();
    s.create("p", "a", BTreeMap::new()).unwrap();
    s.add_version("p", "a", b"x", None).unwrap();
    s.delete("p", "a").unwrap();
    assert!(matches!(s.delete("p", "a"), Err(SecretsError::NotFound(_))));
    s.create("p", "a", BTreeMap::new()).unwrap();
    assert!(s.versions("p", "a").unwrap().is_empty());
    assert_eq!(s.add_version("p", "a", b"y", None).unwrap().version, 1);
}
