"""How bench/evals/citations_ruler.py finds RULER's needles and grades the cited spans (no model: the measured rate
in docs/documents.md rests on these rules)."""

from __future__ import annotations

from bench.evals import citations_ruler as cr

HAY = "The grass is green. The sky is blue.\nWhat a day. Here we go."
NIAH = ("A special magic number is hidden within the following text.\n" + HAY +
        " One of the special magic numbers for quiet-harbor is: 4417823. There and back again.\n"
        "What is the special magic number for quiet-harbor mentioned in the provided text? The special magic number "
        "for quiet-harbor mentioned in the provided text is")


def span(text: str, part: str) -> dict:
    start = text.index(part)
    return {"start": start, "end": start + len(part), "score": 0.1, "text": part}


def test_the_question_starts_at_the_last_what_line_even_when_the_haystack_has_one():
    document, question = cr.split_prompt("niah", NIAH)
    assert document.endswith("There and back again.") and "\nWhat a day." in document
    assert question.startswith("What is the special magic number for quiet-harbor") and question.endswith("text is")
    qa = "Answer the question.\n\nDocument 1:\nParis is in France.\n\nAnswer the question.\n\nQuestion: Where? Answer:"
    assert cr.split_prompt("qa", qa) == ("Answer the question.\n\nDocument 1:\nParis is in France.",
                                         "Answer the question.\n\nQuestion: Where? Answer:")


def test_a_needle_is_the_whole_sentence_holding_its_value_and_a_missing_value_locates_nothing():
    document, _ = cr.split_prompt("niah", NIAH)
    ((region,),) = cr.niah_needles(document, ["4417823"])
    assert document[slice(*region)] == "One of the special magic numbers for quiet-harbor is: 4417823."
    two = document + "\nOne of the special magic numbers for quiet-harbor is: 1234567."
    assert [[two[slice(*r)][-8:] for r in regions] for regions in cr.niah_needles(two, ["4417823", "1234567"])] == [
        ["4417823."], ["1234567."]]
    assert cr.niah_needles(document, ["4417823", "7654321"]) is None


def test_a_squad_needle_is_the_gold_paragraphs_annotated_sentence_not_a_distractors_mention():
    gold = "Normandy is a region. It lies in France. Rollo came from the north."
    distractor = "France is a country. Its capital is Paris."
    document = f"Answer.\n\nDocument 1:\n{distractor}\n\nDocument 2:\n{gold}"
    squad = cr.squad_answers({"data": [{"paragraphs": [
        {"context": distractor, "qas": [{"question": "What is the capital?", "answers": [
            {"text": "Paris", "answer_start": distractor.index("Paris")}]}]},
        {"context": gold, "qas": [{"question": "Where is Normandy?", "answers": [
            {"text": "France", "answer_start": gold.index("France")}] * 2}]}]}]})
    question = "Answer.\n\nQuestion: Where is Normandy? Answer:"
    ((region,),) = cr.qa_needles(document, question, ["France", "France"], squad)
    assert document[slice(*region)] == "It lies in France."
    assert cr.qa_needles(document, question, ["Paris"], squad) is None  # not this question's answers
    assert cr.qa_needles(document, "Question: Who? Answer:", ["Rollo"], squad) is None  # not in SQuAD


def test_any_needle_counts_in_the_top_3_and_all_needles_in_the_top_max_3_needles():
    text = "a1. b2. c3. d4. e5. f6."
    needles = [[(0, 3)], [(4, 7)], [(8, 11)], [(12, 15)]]  # a1. b2. c3. d4.
    spans = [span(text, "e5."), span(text, "b2."), span(text, "f6."), span(text, "a1."), span(text, "c3.")]
    g = cr.grade(needles, spans)
    assert g["ranks"] == [3, 1, 4, None] and g["any_top3"] and not g["top1"] and not g["all_topk"]
    g = cr.grade(needles[:2], spans)  # two needles: the first 3 spans count, and a1. is 4th
    assert not g["all_topk"] and g["any_top3"]
    g = cr.grade(needles, [span(text, s) for s in ("d4.", "c3.", "b2.", "a1.")])
    assert g["all_topk"] and g["top1"]
    assert not cr.grade([[(0, 3)]], [span(text, "b2."), span(text, "c3."), span(text, "d4.")])["any_top3"]


def test_rates_count_only_correct_answers_whose_needles_were_located():
    hit = {"correct": True, "score": 1.0, "needles": [[(0, 1)]], "any_top3": True, "all_topk": True, "top1": True,
           "seconds": 2.0}
    rows = [hit, {**hit, "any_top3": False, "all_topk": False, "top1": False},
            {**hit, "correct": False, "score": 0.5, "any_top3": False},  # wrong: not graded
            {"correct": True, "score": 1.0, "needles": None, "seconds": 2.0}]  # not located: counted, not graded
    s = cr.summary(rows)
    assert (s["n"], s["correct"], s["graded"], s["not_located"], s["any_top3"]) == (4, 3, 2, 1, 1)
    assert s["any_top3_rate"] == 0.5 and s["mean_score"] == 0.875
