//! The reply classifier: a recipient's text in, `opt_out`, `opt_in`, `help` or `other` out, with
//! whether it is certain. Pure and data-driven: the words live in `policies/keywords.toml`.
//!
//! Carriers act only on a bare keyword; the FCC (47 CFR 64.1200(a)(10), since 2025-04-11) says
//! any reasonable way of saying stop revokes consent. So consentry reads more liberally than the
//! carriers — keywords with courtesy words around them ("Stop please", "STOP!!"), and phrases
//! ("please stop texting me") — and sends what looks like a revocation but is not certain
//! ("don't stop", "stop by tomorrow?", a stop-sign emoji) to review instead of dropping it.

use std::collections::HashSet;

use serde::Deserialize;
use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::is_combining_mark;

/// What a reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    OptOut,
    OptIn,
    Help,
    Other,
}

impl Class {
    pub fn as_str(&self) -> &'static str {
        match self {
            Class::OptOut => "opt_out",
            Class::OptIn => "opt_in",
            Class::Help => "help",
            Class::Other => "other",
        }
    }
}

/// The classifier's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Classification {
    pub class: Class,
    /// False for an opt-out that needs a person's review.
    pub certain: bool,
    /// The keyword, phrase or symbol that decided it.
    pub matched: Option<String>,
}

impl Classification {
    fn certain(class: Class, matched: String) -> Self {
        Classification {
            class,
            certain: true,
            matched: Some(matched),
        }
    }

    fn review(matched: String) -> Self {
        Classification {
            class: Class::OptOut,
            certain: false,
            matched: Some(matched),
        }
    }

    fn other() -> Self {
        Classification {
            class: Class::Other,
            certain: true,
            matched: None,
        }
    }

    /// An uncertain opt-out: recorded for review.
    pub fn needs_review(&self) -> bool {
        self.class == Class::OptOut && !self.certain
    }
}

/// `policies/keywords.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordFile {
    pub opt_out: OptOutWords,
    pub opt_in: KeywordList,
    pub help: KeywordList,
    pub courtesy: CourtesyWords,
    pub review: ReviewWords,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptOutWords {
    pub keywords: Vec<String>,
    pub phrases: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordList {
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourtesyWords {
    pub words: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewWords {
    pub words: Vec<String>,
    pub negations: Vec<String>,
    pub symbols: Vec<String>,
    pub blocks_sends: bool,
}

/// The classifier, built once from the keyword file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keywords {
    opt_out: HashSet<String>,
    opt_in: HashSet<String>,
    help: HashSet<String>,
    courtesy: HashSet<String>,
    phrases: Vec<Vec<String>>,
    review_words: Vec<Vec<String>>,
    negations: Vec<Vec<String>>,
    symbols: Vec<String>,
    /// Whether an uncertain opt-out blocks sends until resolved.
    pub review_blocks_sends: bool,
}

/// The longest reply read; the rest of a longer text is not looked at.
const MAX_CLASSIFIED_CHARS: usize = 2000;

/// The normalised words of a text: NFKC, accents removed, lower case, apostrophes dropped,
/// every other non-alphanumeric character a separator.
pub fn words(text: &str) -> Vec<String> {
    let folded: String = text
        .chars()
        .take(MAX_CLASSIFIED_CHARS)
        .nfkc()
        .collect::<String>()
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .filter(|c| !matches!(c, '\'' | '\u{2019}' | '`'))
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    folded.split_whitespace().map(str::to_owned).collect()
}

fn entry_words(entry: &str) -> Vec<String> {
    words(entry)
}

impl Keywords {
    pub fn new(file: &KeywordFile) -> Result<Self, String> {
        let set = |list: &[String], name: &str| -> Result<HashSet<String>, String> {
            list.iter()
                .map(|entry| {
                    let normal = entry_words(entry).join(" ");
                    if normal.is_empty() {
                        Err(format!("{name}: {entry:?} has no letters or digits"))
                    } else {
                        Ok(normal)
                    }
                })
                .collect()
        };
        let sequences = |list: &[String]| -> Vec<Vec<String>> {
            list.iter()
                .map(|entry| entry_words(entry))
                .filter(|words| !words.is_empty())
                .collect()
        };
        let keywords = Keywords {
            opt_out: set(&file.opt_out.keywords, "opt_out.keywords")?,
            opt_in: set(&file.opt_in.keywords, "opt_in.keywords")?,
            help: set(&file.help.keywords, "help.keywords")?,
            courtesy: set(&file.courtesy.words, "courtesy.words")?,
            phrases: sequences(&file.opt_out.phrases),
            review_words: sequences(&file.review.words),
            negations: sequences(&file.review.negations),
            symbols: file.review.symbols.clone(),
            review_blocks_sends: file.review.blocks_sends,
        };
        for (name, list) in [("opt_in", &keywords.opt_in), ("help", &keywords.help)] {
            if let Some(both) = list.iter().find(|word| keywords.opt_out.contains(*word)) {
                return Err(format!(
                    "{name}.keywords: {both:?} is also an opt-out keyword"
                ));
            }
        }
        Ok(keywords)
    }

    /// Classifies a reply.
    pub fn classify(&self, text: &str) -> Classification {
        let words = words(text);
        let core = self.without_courtesy(&words);
        if !core.is_empty() {
            let joined = core.join(" ");
            if self.opt_out.contains(&joined) {
                return Classification::certain(Class::OptOut, joined);
            }
            // "stop stop", "STOP. END": every word an opt-out keyword.
            if core.iter().all(|word| self.opt_out.contains(word)) {
                return Classification::certain(Class::OptOut, joined);
            }
            if self.help.contains(&joined) {
                return Classification::certain(Class::Help, joined);
            }
            if self.opt_in.contains(&joined) {
                return Classification::certain(Class::OptIn, joined);
            }
        }
        for phrase in &self.phrases {
            if let Some(at) = find(&words, phrase) {
                let matched = phrase.join(" ");
                return if self.negated(&words, at) {
                    Classification::review(matched)
                } else {
                    Classification::certain(Class::OptOut, matched)
                };
            }
        }
        if let Some(word) = self.review_words.iter().find(|w| find(&words, w).is_some()) {
            return Classification::review(word.join(" "));
        }
        if let Some(symbol) = self.symbols.iter().find(|s| text.contains(s.as_str())) {
            return Classification::review(symbol.clone());
        }
        Classification::other()
    }

    fn without_courtesy<'a>(&self, words: &'a [String]) -> &'a [String] {
        let start = words
            .iter()
            .position(|w| !self.courtesy.contains(w))
            .unwrap_or(words.len());
        let end = words
            .iter()
            .rposition(|w| !self.courtesy.contains(w))
            .map_or(start, |last| last + 1);
        &words[start..end.max(start)]
    }

    /// Whether a negation ends right before position `at`.
    fn negated(&self, words: &[String], at: usize) -> bool {
        self.negations
            .iter()
            .any(|negation| at >= negation.len() && words[at - negation.len()..at] == negation[..])
    }
}

/// The first position where `needle` occurs in `words` as whole words.
fn find(words: &[String], needle: &[String]) -> Option<usize> {
    if needle.is_empty() || needle.len() > words.len() {
        return None;
    }
    words
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Keywords {
        let file: KeywordFile = toml::from_str(include_str!("../policies/keywords.toml")).unwrap();
        Keywords::new(&file).unwrap()
    }

    /// (text, class, certain)
    const CASES: &[(&str, Class, bool)] = &[
        ("STOP", Class::OptOut, true),
        ("stop", Class::OptOut, true),
        (" Stop. ", Class::OptOut, true),
        ("STOP!", Class::OptOut, true),
        ("STOP!!!", Class::OptOut, true),
        ("ＳＴＯＰ", Class::OptOut, true),
        ("Stop please", Class::OptOut, true),
        ("please stop", Class::OptOut, true),
        ("STOP ALL", Class::OptOut, true),
        ("stopall", Class::OptOut, true),
        ("StopAll", Class::OptOut, true),
        ("stop stop stop", Class::OptOut, true),
        ("STOP. END.", Class::OptOut, true),
        ("unsubscribe", Class::OptOut, true),
        ("UNSUBSCRIBE", Class::OptOut, true),
        ("Unsubscribe me", Class::OptOut, true),
        ("opt-out", Class::OptOut, true),
        ("Opt Out", Class::OptOut, true),
        ("OPTOUT", Class::OptOut, true),
        ("revoke", Class::OptOut, true),
        ("Revoke.", Class::OptOut, true),
        ("END", Class::OptOut, true),
        ("end", Class::OptOut, true),
        ("CANCEL", Class::OptOut, true),
        // misspellings and abbreviations whose only reading is an opt-out
        ("Stp", Class::OptOut, true),
        ("STPO", Class::OptOut, true),
        ("sotp", Class::OptOut, true),
        ("Stopp!", Class::OptOut, true),
        ("S T O P", Class::OptOut, true),
        ("s.t.o.p", Class::OptOut, true),
        ("unsub", Class::OptOut, true),
        ("Unsub please", Class::OptOut, true),
        ("unsuscribe", Class::OptOut, true),
        ("UNSUBCRIBE", Class::OptOut, true),
        ("cancle", Class::OptOut, true),
        ("Arrête", Class::OptOut, true),
        ("désabonner", Class::OptOut, true),
        ("Abmelden", Class::OptOut, true),
        // likely, but also other words: review, never a normal reply
        ("stoop", Class::OptOut, false),
        ("HALT", Class::OptOut, false),
        ("Basta!", Class::OptOut, false),
        ("no más", Class::OptOut, false),
        ("this is spam", Class::OptOut, false),
        ("cancel please", Class::OptOut, true),
        ("QUIT", Class::OptOut, true),
        ("quit", Class::OptOut, true),
        ("REMOVE", Class::OptOut, true),
        ("ARRET", Class::OptOut, true),
        ("arrêt", Class::OptOut, true),
        ("Arrêt", Class::OptOut, true),
        ("BAJA", Class::OptOut, true),
        ("baja por favor", Class::OptOut, true),
        ("ALTO", Class::OptOut, true),
        ("PARAR", Class::OptOut, true),
        ("TD", Class::OptOut, true),
        ("please stop texting me", Class::OptOut, true),
        ("Please stop texting me.", Class::OptOut, true),
        ("stop texting me", Class::OptOut, true),
        ("STOP SENDING ME THESE", Class::OptOut, true),
        ("stop messaging me!!", Class::OptOut, true),
        ("remove me", Class::OptOut, true),
        ("Remove me from your list", Class::OptOut, true),
        ("take me off this list", Class::OptOut, true),
        ("leave me alone", Class::OptOut, true),
        ("Leave me alone!!!", Class::OptOut, true),
        ("do not text me again", Class::OptOut, true),
        ("don't text me", Class::OptOut, true),
        ("no more texts please", Class::OptOut, true),
        ("wrong number", Class::OptOut, true),
        ("not interested", Class::OptOut, true),
        ("opt me out", Class::OptOut, true),
        ("Stop it", Class::OptOut, true),
        ("HELP", Class::Help, true),
        ("help", Class::Help, true),
        ("Help!", Class::Help, true),
        ("help me", Class::Help, true),
        ("INFO", Class::Help, true),
        ("info please", Class::Help, true),
        ("AYUDA", Class::Help, true),
        ("START", Class::OptIn, true),
        ("start", Class::OptIn, true),
        ("Start.", Class::OptIn, true),
        ("unstop", Class::OptIn, true),
        ("UNSTOP", Class::OptIn, true),
        ("yes", Class::OptIn, true),
        ("YES!", Class::OptIn, true),
        ("Yes please", Class::OptIn, true),
        ("subscribe", Class::OptIn, true),
        ("Don't stop", Class::OptOut, false),
        ("dont stop", Class::OptOut, false),
        ("don't stop texting me, I love these", Class::OptOut, false),
        ("stop by tomorrow?", Class::OptOut, false),
        ("Can you stop by the store?", Class::OptOut, false),
        (
            "how do I unsubscribe from the other list",
            Class::OptOut,
            false,
        ),
        ("🛑", Class::OptOut, false),
        ("⛔⛔", Class::OptOut, false),
        ("", Class::Other, true),
        ("   ", Class::Other, true),
        ("!!!", Class::Other, true),
        ("please", Class::Other, true),
        ("Thanks, see you Tuesday", Class::Other, true),
        ("Can I cancel my appointment?", Class::Other, true),
        ("What time do you open?", Class::Other, true),
        ("ok", Class::Other, true),
        ("👍", Class::Other, true),
        ("no", Class::Other, true),
        ("Start time is 5pm?", Class::Other, true),
    ];

    #[test]
    fn replies_are_classified_as_a_person_would_read_them() {
        let keywords = shipped();
        assert!(CASES.len() >= 80, "{} cases", CASES.len());
        for (text, class, certain) in CASES {
            let found = keywords.classify(text);
            assert_eq!(
                (found.class, found.certain),
                (*class, *certain),
                "{text:?} gave {found:?}"
            );
        }
    }

    #[test]
    fn long_bodies_are_classified_without_reading_them_whole() {
        let keywords = shipped();
        let long = "a".repeat(1600);
        assert_eq!(keywords.classify(&long).class, Class::Other);
        let long_stop = format!("{} stop", "hello ".repeat(300));
        assert!(keywords.classify(&long_stop).needs_review());
    }

    #[test]
    fn a_keyword_in_two_lists_is_refused() {
        let mut file: KeywordFile =
            toml::from_str(include_str!("../policies/keywords.toml")).unwrap();
        file.opt_in.keywords.push("STOP".into());
        assert!(
            Keywords::new(&file)
                .unwrap_err()
                .contains("opt_in.keywords")
        );
    }
}
