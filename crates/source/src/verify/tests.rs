use super::{parse_time, split_options, split_token};

#[test]
fn times() {
    assert_eq!(parse_time("19700101"), Ok(0));
    assert_eq!(parse_time("20240229"), Ok(1_709_164_800));
    assert_eq!(
        parse_time("202402291230"),
        Ok(1_709_164_800 + 12 * 3600 + 30 * 60)
    );
    assert_eq!(
        parse_time("20240229123005Z"),
        Ok(1_709_164_800 + 12 * 3600 + 30 * 60 + 5)
    );
    assert!(parse_time("2024-02-29").is_err());
    assert!(parse_time("2024").is_err());
    // Dates that do not exist are refused, not wrapped into the next month.
    assert!(parse_time("20230229").is_err());
    assert!(parse_time("20241301").is_err());
    assert!(parse_time("202402292460").is_err());
}

#[test]
fn tokens_and_options() {
    assert_eq!(
        split_token("a@b ssh-ed25519 AAA"),
        ("a@b", " ssh-ed25519 AAA")
    );
    assert_eq!(
        split_token(r#"namespaces="git,file" ssh-ed25519 AAA"#),
        (r#"namespaces="git,file""#, " ssh-ed25519 AAA")
    );
    assert_eq!(
        split_options(r#"namespaces="git,file",valid-after=20240101"#),
        [r#"namespaces="git,file""#, "valid-after=20240101"]
    );
}
