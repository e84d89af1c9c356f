"""The PRM's input: what `PRMScorer` gives the engine fits the PRM's context, as token ids the engine reads as it
would read the text (no second tokenization in the engine)."""

import random

from adaptcot.grade.prm import PRMConfig, prm_input, prm_prompt


def test_an_answer_of_one_step_longer_than_the_context_is_cut_to_fit_it(tiny_models_dir):
    """The step is cut by its own tokens, but inside the chat template the text may tokenize longer: the cut is
    shortened until the whole input fits (random text hit this on 6 of 40 answers before)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir["prm"])
    cfg = PRMConfig(model=str(tiny_models_dir["prm"]), max_model_len=512)
    for seed in range(40):
        rng = random.Random(seed)
        response = tokenizer.decode([rng.randrange(tokenizer.vocab_size) for _ in range(1500)])
        text, ids, scored, total = prm_prompt(tokenizer, "What is 7 times 200?", response, cfg, "double_newline")
        assert scored == 1 and len(ids) <= 512
        assert ids == tokenizer(text)["input_ids"]  # as vLLM would tokenize the text (special tokens added)
        assert prm_input(tokenizer, "What is 7 times 200?", response, cfg, "double_newline") == (text, 1, total)
