"""Weight-decay groups are decided by parameter name before any wrapping (FSDP flattens shapes)."""

from infra_pl.module import SFTModule
from tests.conftest import TINY_MODEL


def test_no_decay_names_are_the_module_parameters_with_vectors_and_norms(small_tokenizer):
    module = SFTModule(model_config=TINY_MODEL)
    module._resolve_tokenizer = lambda: small_tokenizer
    module.configure_model()
    params = dict(module.named_parameters())
    expected = {n for n, p in params.items() if n.startswith("model.") and (p.ndim < 2 or "norm" in n.lower())}
    assert module._no_decay == expected and expected  # names match named_parameters(), so FSDP-flattened ones still find them
    assert not any(params[n].ndim >= 2 for n in expected if "norm" not in n.lower())
