//! The reply classifier: `keywords::Keywords::classify` (built by `Keywords::new` from the
//! shipped `policies/keywords.toml`) and `keywords::words` on any text.
//!
//! Properties: no panic; every normalised word is non-empty and alphanumeric; a reply read as
//! an opt-out is still one with courtesy words around it ("please ... thanks"), as the
//! module promises; an uncertain opt-out names what matched.
#![no_main]

use std::sync::LazyLock;

use consentry::keywords::{words, Class, KeywordFile, Keywords};
use libfuzzer_sys::fuzz_target;

static KEYWORDS: LazyLock<Keywords> = LazyLock::new(|| {
    let file: KeywordFile =
        toml::from_str(include_str!("../../policies/keywords.toml")).expect("keywords.toml");
    Keywords::new(&file).expect("the shipped keywords load")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for word in words(text) {
        assert!(
            !word.is_empty() && word.chars().all(char::is_alphanumeric),
            "words({text:?}) gives {word:?}"
        );
    }
    let keywords = &*KEYWORDS;
    let class = keywords.classify(text);
    if class.class != Class::Other {
        assert!(class.matched.is_some(), "{text:?}: {class:?} names no match");
    }
    if class.class == Class::OptOut && text.chars().count() <= 1900 {
        let wrapped = format!("please {text} thanks");
        let again = keywords.classify(&wrapped);
        assert_eq!(
            again.class,
            Class::OptOut,
            "{text:?} is {class:?}, but {wrapped:?} is {again:?}"
        );
        if class.certain {
            assert!(again.certain, "{text:?} is {class:?}, but {wrapped:?} is {again:?}");
        }
    }
});
