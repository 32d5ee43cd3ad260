//! Every class of bad input gets a typed error with file, line and column, what was expected,
//! and the valid names where a name was unknown; impossible scenarios are rejected before they
//! run.

use scenario::{load_str, ErrorClass, LoadError};

const HEAD: &str = "name = \"t\"\n[machine]\nframes = 64\n[[process]]\nname = \"p\"\n[[process.mapping]]\nname = \"a\"\npages = 4\n";

fn err(text: &str) -> LoadError {
    match load_str("t.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn a_good_file_loads() {
    let l = load_str(
        "t.toml",
        &format!("{HEAD}[[step]]\nop = \"reclaim\"\npages = 4\n"),
    )
    .unwrap();
    assert_eq!(l.scenario.steps.len(), 1);
}

#[test]
fn not_toml_is_a_syntax_error_with_its_position() {
    let e = err("name = \"t\"\n[machine\nframes = 1\n");
    assert_eq!((e.what, e.line), (ErrorClass::Syntax, 2), "{e}");
    assert!(e.to_string().starts_with("t.toml:2:"), "{e}");
}

#[test]
fn an_unknown_key_is_named_with_the_valid_ones() {
    let e = err(&format!(
        "{HEAD}[[step]]\nop = \"reclaim\"\npages = 4\nfast = true\n"
    ));
    assert_eq!(e.what, ErrorClass::Syntax);
    assert_eq!(e.line, 9, "{e}");
    assert!(e.message.contains("unknown field `fast`"), "{e}");
    assert!(e.message.contains("`pages`"), "{e}");
    let e = err("name = \"t\"\ncolour = 1\n[machine]\nframes = 64\n");
    assert!(
        e.message.contains("unknown field `colour`") && e.message.contains("`machine`"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (2, 1), "{e}");
}

#[test]
fn an_unknown_driver_lists_the_valid_ones() {
    let e = err(&format!(
        "{HEAD}[[driver]]\nname = \"d\"\nkind = \"nvidia\"\nprocess = \"p\"\n"
    ));
    assert_eq!((e.what, e.line), (ErrorClass::Syntax, 11), "{e}");
    assert!(e.message.contains("unknown variant `nvidia`"), "{e}");
    for k in [
        "dmirror",
        "odp",
        "kvm-4.19",
        "gntdev-4.12",
        "userptr-5.7",
        "sva",
    ] {
        assert!(e.message.contains(&format!("`{k}`")), "{k}: {e}");
    }
}

#[test]
fn an_unknown_operation_lists_the_valid_ones() {
    let e = err(&format!("{HEAD}[[step]]\nop = \"swapoff\"\n"));
    assert_eq!(e.what, ErrorClass::Syntax);
    assert!(e.message.contains("unknown variant `swapoff`"), "{e}");
    for op in [
        "write",
        "madvise",
        "oom-kill",
        "device",
        "thread",
        "wait-hang",
    ] {
        assert!(e.message.contains(&format!("`{op}`")), "{op}: {e}");
    }
    assert!(e.line >= 9, "{e}");
}

#[test]
fn an_unknown_action_of_a_driver_lists_its_actions() {
    let e = err(&format!(
        "{HEAD}[[driver]]\nname = \"k\"\nkind = \"kvm\"\nprocess = \"p\"\n[[step]]\nop = \"device\"\ndriver = \"k\"\naction = \"snapshot\"\nat = \"a\"\n"
    ));
    assert_eq!((e.what, e.line), (ErrorClass::Impossible, 13), "{e}");
    assert!(e.message.contains("no action `snapshot`"), "{e}");
    assert!(e.message.contains("`fault`, `read`, `write`"), "{e}");
}

#[test]
fn a_wrong_type_says_what_was_expected() {
    let e = err("name = \"t\"\n[machine]\nframes = \"lots\"\n");
    assert_eq!(
        (e.what, e.line, e.column),
        (ErrorClass::Syntax, 3, 10),
        "{e}"
    );
    assert!(e.message.contains("invalid type: string \"lots\""), "{e}");
    assert!(e.message.contains("expected usize"), "{e}");
    let e = err(&format!("{HEAD}[[step]]\nop = \"reclaim\"\npages = -3\n"));
    assert_eq!(e.what, ErrorClass::Syntax, "{e}");
}

#[test]
fn a_missing_key_is_named() {
    let e = err("name = \"t\"\n[machine]\nswap = 4\n");
    assert!(e.message.contains("missing field `frames`"), "{e}");
}

#[test]
fn more_memory_than_the_machine_is_impossible() {
    let e = err("name = \"t\"\n[machine]\nframes = 64\nswap = 8\n[[process]]\nname = \"p\"\n[[process.mapping]]\nname = \"a\"\npages = 100\npopulate = true\n");
    assert_eq!(e.what, ErrorClass::Impossible, "{e}");
    assert!(
        e.message
            .contains("100 pages, more than the machine's 64 frames + 8 swap slots"),
        "{e}"
    );
    let e = err("name = \"t\"\n[machine]\nframes = 0\n");
    assert_eq!(e.what, ErrorClass::Impossible, "{e}");
    let e =
        err("name = \"t\"\n[machine]\nframes = 64\nwatermarks = { min = 4, low = 2, high = 8 }\n");
    assert!(e.message.contains("min <= low <= high"), "{e}");
}

#[test]
fn a_driver_on_a_missing_process_is_impossible() {
    let e = err(&format!(
        "{HEAD}[[driver]]\nname = \"d\"\nkind = \"dmirror\"\nprocess = \"q\"\n"
    ));
    assert_eq!((e.what, e.line), (ErrorClass::Impossible, 9), "{e}");
    assert!(
        e.message.contains("no process `q`") && e.message.contains("`p`"),
        "{e}"
    );
}

#[test]
fn impossible_references_are_rejected_before_running() {
    let cases = [
        ("[[step]]\nop = \"write\"\nat = \"b\"\n", "no mapping `b`"),
        (
            "[[step]]\nop = \"write\"\nat = \"a\"\npage = 3\npages = 2\n",
            "not inside mapping `a`",
        ),
        (
            "[[step]]\nop = \"exit\"\nprocess = \"p\"\n[[step]]\nop = \"write\"\nat = \"a\"\n",
            "no process `p` at this point",
        ),
        (
            "[[step]]\nop = \"close\"\ndriver = \"x\"\n",
            "no driver `x`",
        ),
        ("[[step]]\nop = \"stop\"\nthread = \"t\"\n", "no thread `t`"),
        (
            "[[step]]\nop = \"wait-hang\"\nlimit_ms = 5\n",
            "needs the watchdog",
        ),
        ("[[expect]]\nmust = \"hang\"\n", "watchdog"),
        (
            "[[expect]]\nmust = \"report\"\nmust_not = \"hang\"\n",
            "exactly one of",
        ),
        ("[[expect]]\nmust = \"counter\"\n", "names its `counter`"),
        (
            "[[expect]]\nmust_not = \"report\"\nthread = \"x\"\n",
            "`thread` applies to hang",
        ),
        (
            "[[driver]]\nname = \"o\"\nkind = \"odp\"\nprocess = \"p\"\n",
            "give `at`",
        ),
        (
            "[[driver]]\nname = \"k\"\nkind = \"kvm-4.19\"\nprocess = \"p\"\n",
            "pre-5.12",
        ),
        (
            "[[step]]\nop = \"mprotect\"\nat = \"a\"\nprot = \"rwz\"\n",
            "protection `rwz`",
        ),
        (
            "[[step]]\nop = \"write\"\nat = \"a\"\nmay_fail = true\nerror = \"x\"\n",
            "exclude each other",
        ),
    ];
    for (tail, want) in cases {
        let e = err(&format!("{HEAD}{tail}"));
        assert_eq!(e.what, ErrorClass::Impossible, "{tail}: {e}");
        assert!(e.message.contains(want), "{tail}: want {want:?} in {e}");
        assert!(e.line >= 9, "{tail}: {e}");
    }
}

#[test]
fn a_missing_file_is_an_io_error() {
    let e = scenario::load_file(std::path::Path::new("/nonexistent/x.toml")).unwrap_err();
    assert_eq!(e.what, ErrorClass::Io);
}
