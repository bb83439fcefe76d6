//! The verifiers a teacher's chain must pass (paper §3.2: verifiable signals, brevity).
//!
//! Each gives a verdict and a reason. They read the teacher's raw reply, which must be in
//! the completion format the student will be trained on
//! (`<think>…</think><answer>X</answer>`):
//! - `answer`: the shared strict extractor reads the gold answer from it;
//! - `format`: exactly one reasoning block and one answer tag, with reasoning in it;
//! - `no_leak`: the reasoning does not lean on the answer having been given (the teacher
//!   saw it; the student will not): no "the given answer", "answer key", …, and it does not
//!   open by announcing the answer before any reasoning;
//! - `length`: the reasoning has between `min_words` and `max_words` words (brevity);
//! - `grounded`: for a synthetic item of the connected graph, the reasoning names every
//!   entity of the item's knowledge-graph path (the hidden links included).
//!
//! Every comparison is on whole `str`s (lowercased copies searched with `contains`): a
//! reply is remote input and no byte offset of one string is used in another.

use fleming_questions::Question;

/// The verifiers, in the order their verdicts are reported.
pub const VERIFIERS: [&str; 5] = ["answer", "format", "no_leak", "length", "grounded"];

/// Phrases by which a chain leans on being told the answer.
const LEAKS: &[&str] = &[
    "given answer",
    "provided answer",
    "answer provided",
    "answer key",
    "stated answer",
    "answer is stated",
    "answer is given",
    "answer was given",
    "we are told the answer",
    "i was told",
    "the expected answer",
    "the reference answer",
];

/// One verifier's verdict on one reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The verifier.
    pub verifier: &'static str,
    /// Whether the reply passes it.
    pub ok: bool,
    /// Why (for a failure), or what was checked.
    pub reason: String,
}

/// What the verifiers are configured with.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Enabled verifiers (a subset of [`VERIFIERS`]).
    pub enabled: Vec<&'static str>,
    /// Fewest words of reasoning.
    pub min_words: usize,
    /// Most words of reasoning.
    pub max_words: usize,
}

/// The reasoning of a reply: inside its first `<think>…</think>`, else everything before
/// its first `<answer>` (a reply without tags is all reasoning).
pub fn reasoning(reply: &str) -> &str {
    if let Some((_, rest)) = reply.split_once("<think>") {
        return rest.split_once("</think>").map_or(rest, |(r, _)| r).trim();
    }
    reply.split_once("<answer>").map_or(reply, |(r, _)| r).trim()
}

/// Words of a text (whitespace-separated).
pub fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Every enabled verifier's verdict on `reply` to `q`. `path_names` are the names of the
/// entities of the item's graph path, when it is a synthetic item of the connected graph.
pub fn verify(q: &Question, reply: &str, truncated: bool, rules: &Rules, path_names: Option<&[String]>) -> Vec<Check> {
    let think = reasoning(reply);
    let lower = think.to_lowercase();
    let verdict = fleming_questions::score(q, reply, truncated);
    rules
        .enabled
        .iter()
        .map(|&v| {
            let (ok, reason) = match v {
                "answer" => match (&verdict.answer, &verdict.reason) {
                    (_, Some(why)) => (false, why.to_string()),
                    (Some(a), None) if !verdict.correct => {
                        (false, format!("answers {a}; the gold answer is {}", q.answer))
                    }
                    _ => (true, format!("answers {}", q.answer)),
                },
                "format" => {
                    if !verdict.format_ok {
                        (false, "not in the format <think>…</think><answer>X</answer>".to_string())
                    } else if think.is_empty() {
                        (false, "the reasoning is empty".to_string())
                    } else {
                        (true, "format holds".to_string())
                    }
                }
                "no_leak" => match leak(&lower, q) {
                    Some(why) => (false, why),
                    None => (true, "reasons without relying on the given answer".to_string()),
                },
                "length" => {
                    let n = words(think);
                    if n < rules.min_words {
                        (false, format!("{n} words of reasoning, below the minimum {}", rules.min_words))
                    } else if n > rules.max_words {
                        (false, format!("{n} words of reasoning, above the maximum {}", rules.max_words))
                    } else {
                        (true, format!("{n} words"))
                    }
                }
                "grounded" => match path_names {
                    None => (true, "not applicable: not a synthetic item of the connected graph".to_string()),
                    Some(names) => {
                        let missing: Vec<&str> =
                            names.iter().filter(|n| !lower.contains(&n.to_lowercase())).map(String::as_str).collect();
                        if missing.is_empty() {
                            (true, format!("names the {} entities of the path", names.len()))
                        } else {
                            (false, format!("does not name {} of the path", quoted(&missing)))
                        }
                    }
                },
                _ => (true, "unknown verifier".to_string()),
            };
            Check { verifier: v, ok, reason }
        })
        .collect()
}

fn quoted(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    q.join(", ")
}

/// Why a (lowercased) reasoning leans on the answer having been given, if it does.
fn leak(lower: &str, q: &Question) -> Option<String> {
    if let Some(p) = LEAKS.iter().find(|p| lower.contains(*p)) {
        return Some(format!("mentions \"{p}\": the student is never given the answer"));
    }
    // The first sentence announces the answer: it speaks of "the answer" and names the gold.
    let first = lower.split(['.', '\n', '!', '?']).map(str::trim).find(|s| !s.is_empty()).unwrap_or("");
    let speaks_of_answer =
        ["answer", "correct option", "correct choice", "right option"].iter().any(|w| first.contains(w));
    if speaks_of_answer {
        let names_gold = q.answers().iter().any(|label| {
            let l = label.to_lowercase();
            let text = q.option_text(label).map(str::to_lowercase).unwrap_or_default();
            (!text.is_empty() && first.contains(&text)) || first.split(|c: char| !c.is_alphanumeric()).any(|w| w == l)
        });
        if names_gold {
            return Some("announces the answer before reasoning".to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleming_questions::Choice;

    fn item() -> Question {
        Question {
            id: "q1".into(),
            question: "Which drug treats condition X?".into(),
            options: vec![Choice::new("A", "Aspirin"), Choice::new("B", "Heparin"), Choice::new("C", "Insulin")],
            answer: "B".into(),
            ..Default::default()
        }
    }

    fn rules() -> Rules {
        Rules { enabled: VERIFIERS.to_vec(), min_words: 3, max_words: 30 }
    }

    fn failing(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.verifier).collect()
    }

    #[test]
    fn a_good_chain_passes_every_verifier() {
        let reply = "<think>\nCondition X is a clotting disorder. Heparin is an anticoagulant, so it treats it; aspirin and insulin do not.\n</think>\n<answer>B</answer>";
        let names = vec!["Heparin".to_string(), "condition X".to_string()];
        let c = verify(&item(), reply, false, &rules(), Some(&names));
        assert!(failing(&c).is_empty(), "{c:?}");
    }

    #[test]
    fn each_verifier_names_its_reason() {
        let q = item();
        let r = rules();
        let wrong =
            verify(&q, "<think>Aspirin thins blood well enough here.</think><answer>A</answer>", false, &r, None);
        assert_eq!(failing(&wrong), ["answer"]);
        assert!(wrong[0].reason.contains("gold answer is B"), "{}", wrong[0].reason);
        let loose = verify(&q, "Heparin is the drug for it, clearly so. <answer>B</answer>", false, &r, None);
        assert_eq!(failing(&loose), ["format"]);
        let leak =
            verify(&q, "<think>The given answer is B, so heparin it is.</think><answer>B</answer>", false, &r, None);
        assert_eq!(failing(&leak), ["no_leak"]);
        let announce = verify(
            &q,
            "<think>The answer is heparin. It is an anticoagulant.</think><answer>B</answer>",
            false,
            &r,
            None,
        );
        assert_eq!(failing(&announce), ["no_leak"]);
        assert!(announce.iter().any(|c| c.reason.contains("announces")));
        let long = format!("<think>{}</think><answer>B</answer>", "heparin ".repeat(40));
        assert_eq!(failing(&verify(&q, &long, false, &r, None)), ["length"]);
        let names = vec!["Heparin".to_string(), "thrombosis".to_string()];
        let ungrounded = verify(
            &q,
            "<think>Heparin is an anticoagulant drug used here.</think><answer>B</answer>",
            false,
            &r,
            Some(&names),
        );
        assert_eq!(failing(&ungrounded), ["grounded"]);
        assert!(ungrounded.iter().any(|c| c.reason.contains("`thrombosis`")));
        let cut = verify(&q, "<think>Heparin is an anti", true, &r, None);
        assert!(failing(&cut).contains(&"answer") && failing(&cut).contains(&"format"));
    }

    #[test]
    fn disabled_verifiers_give_no_verdict() {
        let r = Rules { enabled: vec!["answer"], min_words: 1, max_words: 2 };
        let c = verify(&item(), "B is it <answer>B</answer>", false, &r, None);
        assert_eq!(c.len(), 1);
        assert!(c[0].ok);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_replies_never_panic(parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                proptest::strategy::Just("<think>".to_string()),
                proptest::strategy::Just("</think>".to_string()),
                proptest::strategy::Just("<answer>".to_string()),
                proptest::strategy::Just("</answer>".to_string()),
                proptest::strategy::Just("İ".to_string()),
                proptest::strategy::Just("The answer is B.".to_string()),
            ],
            0..10,
        )) {
            let reply = parts.concat();
            let names = vec!["İstanbul".to_string(), "heparin".to_string()];
            let c = verify(&item(), &reply, false, &rules(), Some(&names));
            proptest::prop_assert_eq!(c.len(), VERIFIERS.len());
        }
    }
}
