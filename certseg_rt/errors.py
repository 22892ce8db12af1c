"""User-facing errors: each message names the problem and the fix; the CLI prints it as one line, exit 1."""


class CertsegError(Exception):
    """Bad input, a bad model or engine file, or an unusable environment."""


class InputError(CertsegError, ValueError):
    """An image or parameter the model cannot take."""


# The fix for an engine directory that cannot be used (manifest fields, graphs, versions): said by manifest,
# adapters and the runners alike.
REBUILD = "rebuild it with `certseg-rt build-engine --out DIR`"
