//! Any wire filename through the store's path decoder: no panic; a decoded path holds only plain
//! names (never empty, `.` or `..`, no separator, NUL or control character, no drive prefix first);
//! decoding is idempotent on its own joined output.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringboot::fuzzing::{decode_path, decode_path_joined};

fuzz_target!(|raw: &[u8]| {
    let Ok(components) = decode_path(raw) else {
        return;
    };
    assert!(!components.is_empty(), "{raw:?}: no component");
    for c in &components {
        assert!(!c.is_empty() && c != "." && c != "..", "{raw:?}: {c:?}");
        assert!(
            !c.bytes()
                .any(|b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f),
            "{raw:?}: {c:?} holds a separator or control character"
        );
    }
    let first = components[0].as_bytes();
    assert!(
        !(first.len() >= 2 && first[0].is_ascii_alphabetic() && first[1] == b':'),
        "{raw:?}: drive prefix"
    );
    let joined = decode_path_joined(raw).expect("decodes twice alike");
    assert_eq!(joined, components.join("/"));
    // The joined form is its own decoding.
    assert_eq!(
        decode_path(joined.as_bytes()).ok().as_ref(),
        Some(&components)
    );
    // Every separator form of the same components decodes alike.
    let back = components.join("\\");
    assert_eq!(
        decode_path(back.as_bytes()).ok().as_ref(),
        Some(&components)
    );
});
