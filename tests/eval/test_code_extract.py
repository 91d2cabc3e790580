from infra_pl.eval.code_extract import extract_code


def test_last_python_block_wins():
    text = "Draft:\n```python\ndef f(x):\n    return x\n```\nFixed:\n```python\ndef f(x):\n    return x + 1\n```\n"
    assert extract_code(text) == "def f(x):\n    return x + 1"


def test_python_tag_outranks_later_untagged_output_block():
    text = "```python\ndef f():\n    return 1\n```\nOutput:\n```\n1\n```"
    assert extract_code(text) == "def f():\n    return 1"


def test_untagged_block_used_when_no_python_block():
    text = "Here:\n```\ndef g():\n    pass\n```"
    assert extract_code(text) == "def g():\n    pass"


def test_other_languages_are_ignored():
    assert extract_code("```bash\npip install numpy\n```") is None
    text = "```py\nx = 1\n```\n```bash\nrm -rf /\n```"
    assert extract_code(text) == "x = 1"


def test_indented_fence_is_dedented():
    text = "1. Solution:\n   ```python\n   def f():\n       return 2\n   ```\n"
    assert extract_code(text) == "def f():\n    return 2"


def test_demo_reasoning_format():
    text = (
        "<|begin_of_thought|>\nI need to add 3.\n<|end_of_thought|>\n"
        "<|begin_of_solution|>\n```python\ndef f(x):\n    x = x + 3\n    return x\n```\n<|end_of_solution|>"
    )
    assert extract_code(text) == "def f(x):\n    x = x + 3\n    return x"


def test_bare_code_in_solution_section():
    text = (
        "<|begin_of_thought|>\nthink\n<|end_of_thought|>\n"
        "<|begin_of_solution|>\ndef f(x):\n    return -x\n<|end_of_solution|>"
    )
    assert extract_code(text) == "def f(x):\n    return -x"
    # an unterminated section (generation cut off) still counts
    assert extract_code("<|begin_of_solution|>\ndef h():\n    return 0") == "def h():\n    return 0"


def test_solution_section_without_code_is_none():
    assert extract_code("<|begin_of_solution|>\nThe answer is 5.\n<|end_of_solution|>") is None


def test_no_code_is_none():
    assert extract_code("") is None
    assert extract_code("I cannot solve this.") is None
    assert extract_code("```python\n\n```") is None
    assert extract_code("```python\ndef unterminated():") is None
