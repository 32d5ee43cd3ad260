//! The loader never panics: a proptest over the scenario files and the regression corpus,
//! mutated (bytes cut, inserted, replaced; lines swapped and duplicated; numbers made huge).
//! Whatever loads is also run, when it is small and has no threads or waits, so a file the
//! validator lets through cannot panic the runner either.
//!
//! `tests/corpus/*.toml` keeps every input that found a bug (each file says which); they are
//! loaded (and run when they load) on every `cargo test`. `SCENARIO_FUZZ_CASES` raises the
//! number of cases (default 256); `SCENARIO_FUZZ_COUNT` prints `ran` for each input that was
//! also run (about one in sixteen).

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
        if std::env::var_os("SCENARIO_FUZZ_COUNT").is_some() {
            eprintln!("ran");
        }
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

/// A generated scenario: a random machine and mapping, random drivers, and random steps with
/// numbers both inside and far outside their ranges.
fn generated() -> impl Strategy<Value = String> {
    let num = prop_oneof![0u64..80, Just(u64::MAX), Just(1 << 40), any::<u64>()];
    let step = (0usize..14, num.clone(), num.clone(), 0usize..4);
    (
        (8usize..600, 0u32..600, 1u64..70, any::<bool>(), 0usize..4),
        prop::collection::vec(0usize..8, 0..4),
        prop::collection::vec(step, 0..12),
    )
        .prop_map(|((frames, swap, pages, populate, prof), drivers, steps)| {
            let kinds = ["dmirror", "odp", "kvm", "gntdev", "userptr", "sva", "buggy-no-retry", "gntdev-4.12"];
            let mut s = format!(
                "name = \"gen\"\n[machine]\nframes = {frames}\nswap = {swap}\nprofile = \"{}\"\n[[process]]\nname = \"p\"\n[[process.mapping]]\nname = \"a\"\npages = {pages}\npopulate = {populate}\n",
                if prof == 0 { "pre-5.12" } else { "current" }
            );
            for (i, k) in drivers.iter().enumerate() {
                s += &format!("[[driver]]\nname = \"d{i}\"\nkind = \"{}\"\nprocess = \"p\"\nat = \"a\"\n", kinds[*k]);
            }
            let actions = ["fault", "read", "write", "migrate-to-device", "hold"];
            for (op, x, y, d) in steps {
                s += "[[step]]\n";
                s += &match op {
                    0 => format!("op = \"write\"\nat = \"a\"\npage = {x}\npages = {y}\nmay_fail = true\n"),
                    1 => format!("op = \"read\"\nat = \"a\"\npage = {x}\nmay_fail = true\n"),
                    2 => format!("op = \"madvise\"\nat = \"a\"\npage = {x}\nadvice = \"dontneed\"\n"),
                    3 => format!("op = \"munmap\"\nat = \"a\"\npage = {x}\npages = {y}\nmay_fail = true\n"),
                    4 => format!("op = \"reclaim\"\npages = {x}\n"),
                    5 => "op = \"oom-kill\"\nprocess = \"p\"\n".to_owned(),
                    6 => format!("op = \"fork\"\nprocess = \"p\"\nchild = \"c{x}\"\n"),
                    7 => "op = \"exit\"\nprocess = \"p\"\n".to_owned(),
                    8 => format!("op = \"alloc\"\ngfp = \"atomic\"\nholding = \"d{d}\"\nmay_fail = true\n"),
                    9 => format!("op = \"fill-memory\"\nat = \"a\"\nleave_free = {x}\nmay_fail = true\n"),
                    10 => format!("op = \"migrate\"\nat = \"a\"\npage = {x}\nmay_fail = true\n"),
                    11 => format!("op = \"close\"\ndriver = \"d{d}\"\n"),
                    12 => format!("op = \"mprotect\"\nat = \"a\"\nprot = \"r--\"\npage = {x}\n"),
                    _ => format!(
                        "op = \"device\"\ndriver = \"d{d}\"\naction = \"{}\"\npage = {x}\npages = {}\nmay_fail = true\n",
                        actions[(y % 5) as usize],
                        y % 70
                    ),
                };
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_scenarios_load_and_run_without_panicking(text in generated()) {
        exercise(&text);
    }
}
