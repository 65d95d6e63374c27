"""Errors raised by hydraopt; each message names the file or adapter at fault."""


class HydraoptError(Exception):
    """Base class of every error hydraopt raises on bad input."""


class UnsafeFormatError(HydraoptError):
    """A pickle-based file (.bin, .pt, ...) was offered; hydraopt never unpickles."""


class CorruptAdapterError(HydraoptError):
    """A safetensors file or adapter config that cannot be trusted as written."""


class UnsupportedFeatureError(HydraoptError):
    """The adapter uses a feature hydraopt cannot merge (DoRA, lora_bias, modules_to_save, ...)."""


class IncompatibleAdaptersError(HydraoptError):
    """Adapters that do not share a compatibility key were asked to merge together."""


class BundleError(HydraoptError):
    """A bundle folder that is missing, inconsistent, or would overwrite another bundle."""


class EvaluationError(HydraoptError):
    """A task, eval row or model that cannot be evaluated as asked."""


class HubUnavailableError(HydraoptError):
    """A hub repo that cannot be had now: offline and not cached, unreachable, or no such repo or revision."""
