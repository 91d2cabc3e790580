from infra_pl.data.chat_encoding import IGNORE_INDEX, collate_padded, tokenize_chat

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that reasons step by step."},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": "3 + 4 = 7. The answer is \\boxed{7}."},
]


def test_only_assistant_tokens_carry_loss(small_tokenizer):
    tok = tokenize_chat(small_tokenizer, MESSAGES, max_length=512)
    assert tok is not None
    target_ids = [t for t in tok.labels if t != IGNORE_INDEX]
    decoded = small_tokenizer.decode(target_ids)
    # Exactly the assistant content plus its end-of-turn token: no system/user text, no role tokens.
    assert decoded == MESSAGES[2]["content"] + "<|end|>"
    first = next(i for i, t in enumerate(tok.labels) if t != IGNORE_INDEX)
    assert tok.input_ids[:first] == tok.prompt_ids
    assert small_tokenizer.decode(tok.prompt_ids).endswith("<|assistant|>\n")
    # Every labelled position predicts its own input token (HF shifts internally).
    assert all(l == i for l, i in zip(tok.labels, tok.input_ids) if l != IGNORE_INDEX)


def test_multi_turn_masks_every_non_assistant_turn(small_tokenizer):
    messages = MESSAGES + [
        {"role": "user", "content": "And 3 + 5?"},
        {"role": "assistant", "content": "8."},
    ]
    tok = tokenize_chat(small_tokenizer, messages, max_length=512)
    decoded = small_tokenizer.decode([t for t in tok.labels if t != IGNORE_INDEX])
    assert decoded == MESSAGES[2]["content"] + "<|end|>" + "8.<|end|>"


def test_truncation_and_drop(small_tokenizer):
    full = tokenize_chat(small_tokenizer, MESSAGES, max_length=512)
    n_prompt = len(full.prompt_ids)
    cut = tokenize_chat(small_tokenizer, MESSAGES, max_length=n_prompt + 3)
    assert cut.truncated and len(cut.input_ids) == n_prompt + 3
    assert sum(l != IGNORE_INDEX for l in cut.labels) == 3
    assert tokenize_chat(small_tokenizer, MESSAGES, max_length=n_prompt) is None


def test_collate_pads_and_carries_index():
    feats = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "index": 4},
        {"input_ids": [5], "labels": [-100], "index": 9},
    ]
    right = collate_padded(feats, pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert right["labels"][1].tolist() == [-100, -100, -100]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["index"].tolist() == [4, 9]
    left = collate_padded(feats, pad_token_id=0, pad_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]]
