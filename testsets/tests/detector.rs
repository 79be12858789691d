//! The detector on the cases issue 20 names: the coding prompts the old rules missed, the three
//! false flags, and short non-English prompts. Each case is the shipped prompt (by id) and a
//! paraphrase of it, so that the rules are tested beyond the exact wording they were measured on.
use koala_testsets::EvalSet;
use koala_testsets::curation::{FlagConfig, flag_prompt, flag_prompt_with};

fn shipped(id: &str) -> String {
    EvalSet::ALL
        .iter()
        .flat_map(|s| s.prompts())
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("no prompt {id}"))
        .prompt
}

fn assert_coding(p: &str, want: bool) {
    let f = flag_prompt(p);
    assert_eq!(f.coding, want, "{p:?}: {f:?}");
    if want {
        assert!(
            f.reasons.contains("coding="),
            "the decision explains itself: {f:?}"
        );
    }
}

#[test]
fn java_solution_is_coding() {
    let p = shipped("user_oriented_task_93");
    assert!(p.starts_with("Provide a Java solution"));
    assert_coding(&p, true);
    assert_coding("Give me a C++ solution for two-sum.", true);
}

#[test]
fn bash_command_conversion_is_coding() {
    let p = shipped("user_oriented_task_190");
    assert!(p.starts_with("Convert the given description to a bash command"));
    assert_coding(&p, true);
    assert_coding(
        "Turn this into a shell command: delete every .tmp file under /var.",
        true,
    );
}

#[test]
fn github_actions_workflow_is_coding() {
    let p = shipped("user_oriented_task_78");
    assert!(p.contains("GitHub Actions"));
    assert_coding(&p, true);
    assert_coding(
        "Show me a YAML file for a CI workflow that runs cargo test.",
        true,
    );
}

#[test]
fn code_snippet_search_and_given_code_are_coding() {
    let p = shipped("user_oriented_task_12");
    assert!(p.contains("Look for a code snippet"));
    assert_coding(&p, true);
    assert_coding(&shipped("user_oriented_task_227"), true); // fix bugs in the given code
    assert_coding(&shipped("user_oriented_task_40"), true); // output of LaTeX code
    assert_coding(&shipped("user_oriented_task_210"), true); // English to regex
}

#[test]
fn golang_caption_sudoku_and_python_syllabus_are_not_coding() {
    let caption = shipped("user_oriented_task_61");
    assert!(caption.contains("Golang course"));
    assert_coding(&caption, false);
    let sudoku = shipped("user_oriented_task_134");
    assert!(sudoku.contains("|1|"));
    assert_coding(&sudoku, false);
    let syllabus = shipped("user_oriented_task_103");
    assert!(syllabus.contains("Python"));
    assert_coding(&syllabus, false);
    assert_coding(
        "Write an Instagram caption for our Rust bootcamp. Promo code: RUST20",
        false,
    );
    assert_coding(
        "Write a script for the opening scene of a comedy show.",
        false,
    );
}

#[test]
fn mentions_alone_stay_below_the_threshold_but_a_lower_one_flags_them() {
    let p = "Design a syllabus for the given course.\n\nProgramming for Everybody (Getting Started with Python)";
    let f = flag_prompt(p);
    assert!(
        !f.coding && f.coding_score > 0.0 && f.reasons.contains("mention:python"),
        "{f:?}"
    );
    let f = flag_prompt_with(
        p,
        &FlagConfig {
            coding_threshold: 0.5,
        },
    );
    assert!(f.coding, "{f:?}");
}

#[test]
fn short_non_english_prompts_are_caught_and_short_english_ones_are_not() {
    for p in [
        "谢谢",
        "안녕하세요",
        "Спасибо!",
        "Merci beaucoup !",
        "Hoe laat is het?",
        "Teşekkürler",
        "¿Qué hora es?",
    ] {
        let f = flag_prompt(p);
        assert!(f.non_english && !f.reasons.is_empty(), "{p}: {f:?}");
    }
    for p in [
        "Hello!",
        "Ok",
        "Explain déjà vu.",
        "Plan a trip to São Paulo.",
        "Translate \"bonjour\" into English.",
    ] {
        let f = flag_prompt(p);
        assert!(!f.non_english, "{p}: {f:?}");
    }
}
