"""Every registered backward rule must have at least one finite-difference case."""
import glob
import importlib
import os

from onnxviz.autodiff import DECONVNET, GUIDED, STANDARD


def _all_cases():
    """Every Case in a test_rules_* module's CASES or other *_CASES list."""
    from gradcheck import Case

    here = os.path.dirname(__file__)
    cases = []
    for path in sorted(glob.glob(os.path.join(here, "test_rules_*.py"))):
        module = importlib.import_module(os.path.basename(path)[:-3])
        for name, value in vars(module).items():
            if (name == "CASES" or name.endswith("_CASES")) and isinstance(value, list):
                cases.extend(c for c in value if isinstance(c, Case))
    return cases


def test_every_standard_rule_has_a_case():
    covered = {c.op for c in _all_cases() if c.rules in (None, STANDARD)}
    missing = sorted(set(STANDARD) - covered)
    assert not missing, f"backward rules without a test case: {missing}"


def test_every_replaced_rule_has_a_case():
    for rules in (GUIDED, DECONVNET):
        replaced = {op for op in rules if rules[op] is not STANDARD[op]}
        covered = {c.op for c in _all_cases() if c.rules is rules}
        missing = sorted(replaced - covered)
        assert not missing, f"{rules.name} rules without a test case: {missing}"
