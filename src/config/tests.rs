use super::*;

#[test]
fn empty_file_is_the_defaults() {
    let c = Config::from_toml("").expect("defaults");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(String::from(c.upstream), "http://127.0.0.1:8000");
    assert_eq!(c.store.kind, StoreKind::Memory);
    assert_eq!(c.periods.timezone.0, chrono_tz::Asia::Tehran);
}
