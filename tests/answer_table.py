"""Answer strings and how they must be read, each with the source of the expectation.

Columns: reply, kind (letter | yesno | open), options, lower_letters (MMVP), gold,
expected reading (a letter, "yes"/"no", the cleaned text for open answers, or None),
expected correctness, source. Sources: JQ = VisionOPD/Vision-OPD eval/judge_qwenlm.py
@c2e345f (the authors' rules, with line numbers); MR = mathruler 0.1.0 grade_answer (their
grader); I20 = issue 20's list of misread answers from real runs; LM = lmms-eval @75571cf
lmms_eval/tasks/_task_utils/mcq_extract.py:66-158 (answer-phrase and bracket ranks);
MME = the MME-RealWorld prompt's own answer stem. tests/fixtures/authors_readings.json
records what the authors' rules (their code, run by
tests/fixtures/record_authors_prompts.py) make of each reply.
"""

OPTS4 = ("red", "blue", "green", "yellow")
BALLS = ("a blue box", "a red ball", "a green tree")
ANIMALS = ("dog", "cat")
YN = ("Yes", "No")

TABLE = [
    ("B", "letter", OPTS4, False, "B", "B", True, "JQ:45-57 first-letter rule"),
    ("(B)", "letter", OPTS4, False, "B", "B", True, "JQ:48 bracketed letter"),
    ("B.", "letter", OPTS4, False, "B", "B", True, "JQ:51 letter then '.'"),
    ("B) blue", "letter", OPTS4, False, "B", "B", True, "JQ:51 letter then ')'"),
    ("C: green", "letter", OPTS4, False, "C", "C", True, "LM 'A:' rank"),
    ("The answer is B.", "letter", OPTS4, False, "B", "B", True, "LM answer-phrase rank"),
    ("Answer: B", "letter", OPTS4, False, "B", "B", True,
     "JQ:114-115 keeps 'Answer:', JQ:54 then reads its A (a misreading we fix)"),
    ("The best answer is: D", "letter", OPTS4 + ("none",), False, "D", "D", True, "MME prompt stem"),
    ("Option C", "letter", OPTS4, False, "C", "C", True, "LM 'option X'"),
    ("**B**", "letter", OPTS4, False, "B", "B", True, "I20 markdown emphasis"),
    ("（B）", "letter", OPTS4, False, "B", "B", True, "I20 full-width brackets"),
    ("B。", "letter", OPTS4, False, "B", "B", True, "I20 full-width full stop"),
    ("答案是B", "letter", OPTS4, False, "B", "B", True, "I20 Chinese answer phrase"),
    ("最佳答案为：B", "letter", OPTS4, False, "B", "B", True, "MME CN prompt stem"),
    ("Ｂ", "letter", OPTS4, False, "B", "B", True, "I20 full-width forms (NFKC)"),
    ("<answer>C</answer>", "letter", OPTS4, False, "C", "C", True, "JQ:108-113 answer tag"),
    ("<think>maybe A</think>C", "letter", OPTS4, False, "C", "C", True, "a think block skipped"),
    ("\\boxed{B}", "letter", OPTS4, False, "B", "B", True, "MR extract_boxed_content"),
    ("blue", "letter", OPTS4, False, "B", "B", True, "I20 the option's own text"),
    ("The answer is a red ball.", "letter", BALLS, False, "B", "B", True,
     "I20: the article is no letter; the option's text names B"),
    ("The answer is a red ball.", "letter", ("blue", "green", "yellow", "white"), False, "A",
     None, False, "I20: read as A (the article) before"),
    ("A cat is sitting on the mat.", "letter", ANIMALS, False, "B", "B", True,
     "JQ:51 reads the article as A; the option's text names B"),
    ("B and C", "letter", OPTS4, False, "B", None, False, "two letters: no single answer"),
    ("I think it is a cat", "letter", OPTS4, False, "A", None, False, "no letter, no option text"),
    ("a", "letter", OPTS4, False, "A", "A", True, "MR grade_answer('a', 'A') is true (their step 3)"),
    ("a", "letter", YN, True, "A", "A", True, "I20 MMVP lower-case letter; JQ:89-99"),
    ("a.", "letter", YN, True, "A", "A", True, "I20 MMVP lower-case letter"),
    ("(b)", "letter", YN, True, "B", "B", True, "JQ:93 MMVP '(b)'"),
    ("(b) No", "letter", YN, True, "B", "B", True, "JQ:93 MMVP '(b)'"),
    ("a dog", "letter", ("dog", "cat"), True, "B", "A", False,
     "MMVP: the option text names (a); JQ:96 reads the article the same"),
    ("Yes", "yesno", None, False, "yes", "yes", True, "JQ:78 leading yes"),
    ("No.", "yesno", None, False, "no", "no", True, "JQ:80 leading no"),
    ("Yes, there is a car but no truck", "yesno", None, False, "yes", "yes", True,
     "I20: a leading yes decides"),
    ("There is no car in the image.", "yesno", None, False, "no", "no", True,
     "JQ:82-85 reads the last word (image): unread; ours: the only one named"),
    ("**No**", "yesno", None, False, "no", "no", True, "JQ:74 strips leading '*'"),
    ("Answer: yes", "yesno", None, False, "yes", "yes", True,
     "JQ:75-76 splits on lower-case 'answer': raises on this reply"),
    ("I cannot tell.", "yesno", None, False, "no", None, False, "neither word"),
    ("Red.", "open", None, False, "red", "Red", True, "MR normalised strings"),
    ("The answer is 12", "open", None, False, "12", "12", True, "preamble dropped, MR"),
    ("0.5", "open", None, False, "1/2", "0.5", True, "MR numbers and fractions"),
    ("<answer>green</answer>", "open", None, False, "Green", "green", True, "JQ:108-113, MR"),
    ("twelve", "open", None, False, "12", "twelve", False, "MR false: judge territory (JQ:33-42)"),
]
