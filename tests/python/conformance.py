"""What the Python conformance tests share: the closing summary line ctest shows."""


def report(checks: int, failures: list[str]) -> int:
    """Prints 'N passed, M failed' and each failure; returns the exit code."""
    print(f"{checks - len(failures)} passed, {len(failures)} failed")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0
