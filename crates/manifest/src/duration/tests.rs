use std::time::Duration;

use super::{DurationError, parse_duration};

#[test]
fn argo_forms() {
    let ok = [
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1h30m", 5_400_000),
        ("1.5h", 5_400_000),
        ("250ms", 250),
        ("30", 30_000),
        ("0", 0),
        ("+2m", 120_000),
    ];
    for (input, ms) in ok {
        assert_eq!(
            parse_duration(input),
            Ok(Duration::from_millis(ms)),
            "{input}"
        );
    }
}

#[test]
fn rejects_bad_input() {
    assert_eq!(parse_duration(""), Err(DurationError::Empty));
    assert!(matches!(
        parse_duration("-5s"),
        Err(DurationError::Negative(_))
    ));
    assert!(parse_duration("5").is_ok());
    assert!(matches!(
        parse_duration("5x"),
        Err(DurationError::UnknownUnit { .. })
    ));
    assert!(matches!(
        parse_duration("1h5"),
        Err(DurationError::MissingUnit { .. })
    ));
    assert!(matches!(
        parse_duration("1..5s"),
        Err(DurationError::Malformed(_))
    ));
    assert!(matches!(
        parse_duration("m"),
        Err(DurationError::Malformed(_))
    ));
    assert!(matches!(
        parse_duration("99999999999999999999"),
        Err(DurationError::Overflow(_))
    ));
}
