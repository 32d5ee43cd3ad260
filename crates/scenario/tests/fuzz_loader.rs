//! The loader never panics: a proptest over the scenario files and the regression corpus,
//! mutated (bytes cut, inserted, replaced; lines swapped and duplicated; numbers made huge).
//! Whatever loads is also run, when it is small and has no threads or waits, so a file the
//! validator lets through cannot panic the runner either.
//!
//! `tests/corpus/*.toml` keeps every input that found a bug (each file says which); they are
//! loaded (and run when they load) on every `cargo test`. `SCENARIO_FUZZ_CASES` raises the
//! number of cases (default 256).

use std::path::PathBuf;

use proptest::prelude::*;
use scenario::schema::Step;

fn seeds() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [root.join("../../scenarios"), root.join("tests/corpus")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "toml") {
                    files.push(std::fs::read_to_string(e.path()).unwrap());
                }
            }
        }
    }
    assert!(
        files.len() >= 10,
        "the scenario files and the corpus are there"
    );
    files
}

/// Loads `text`; if it loads, is small and has no threads or waits, runs it.
fn exercise(text: &str) {
    let Ok(loaded) = scenario::load_str("fuzz.toml", text) else {
        return;
    };
    let s = &loaded.scenario;
    let calm = s.steps.iter().all(|st| {
        !matches!(
            st.get_ref(),
            Step::Thread { .. } | Step::WaitHang { .. } | Step::Sleep { .. } | Step::Stop { .. }
        )
    });
    let small = s.machine.frames <= 1024
        && s.processes
            .iter()
            .flat_map(|p| &p.get_ref().mappings)
            .all(|m| m.get_ref().pages <= 4096);
    if calm && small {
        let _ = scenario::run(&loaded, &scenario::RunOptions::default());
    }
}

#[test]
fn the_regression_corpus_loads_or_fails_cleanly() {
    for text in seeds() {
        exercise(&text);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Cut(usize, usize),
    Insert(usize, String),
    Replace(usize, u8),
    SwapLines(usize, usize),
    DupLine(usize),
    HugeNumber(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        Just("\"".to_owned()),
        Just("[[step]]\n".to_owned()),
        Just("{".to_owned()),
        Just("= ".to_owned()),
        Just("\n".to_owned()),
        Just("op = \"thread\"\n".to_owned()),
        Just("pages = 0\n".to_owned()),
        Just("page = 18446744073709551615\n".to_owned()),
        Just("é".to_owned()),
        "[ -~]{0,8}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Mutation::Cut(a, n)),
        (any::<usize>(), token).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Replace(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::DupLine),
        any::<usize>().prop_map(Mutation::HugeNumber),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let len = bytes.len().max(1);
    match m {
        Mutation::Cut(a, n) => {
            let a = a % len;
            let e = (a + n).min(bytes.len());
            bytes.drain(a.min(bytes.len())..e);
        }
        Mutation::Insert(a, t) => {
            let a = a % len;
            bytes.splice(a..a, t.bytes());
        }
        Mutation::Replace(a, b) => {
            if !bytes.is_empty() {
                let a = a % bytes.len();
                bytes[a] = *b;
            }
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let n = lines.len();
                lines.swap(a % n, b % n);
            }
            return lines.join("\n");
        }
        Mutation::DupLine(a) => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let i = a % lines.len();
                lines.insert(i, lines[i]);
            }
            return lines.join("\n");
        }
        Mutation::HugeNumber(a) => {
            let digits: Vec<usize> = text
                .char_indices()
                .filter(|(_, c)| c.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            if !digits.is_empty() {
                let i = digits[a % digits.len()];
                let mut s = text.to_owned();
                s.insert_str(i, "99999999999");
                return s;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn cases() -> u32 {
    std::env::var("SCENARIO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_scenarios_never_panic(pick in any::<usize>(), muts in prop::collection::vec(mutation(), 1..4)) {
        let files = seeds();
        let mut text = files[pick % files.len()].clone();
        for m in &muts {
            text = apply(&text, m);
        }
        exercise(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        exercise(&text);
    }
}
