"""What constraint sets and loss terms share: a registry name, a config that rebuilds them, a repr."""


class Component:
    """Base of atmc_tf.constraints.base.Constraint and atmc_tf.training.terms.base.LossTerm.

    `kind` is the registry name; get_config() returns the constructor's keyword arguments (plain
    JSON values), so that from_config(get_config()) rebuilds an equal component.
    """

    kind = "none"

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), repr(self)))


def to_config(component):
    return {"kind": component.kind, "config": component.get_config()}


def from_config(config, registry, what):
    """The component a to_config dict describes, looked up in `registry` ({kind: class})."""
    kind = config.get("kind")
    if kind not in registry:
        raise ValueError(f"unknown {what} {kind!r}; registered: {sorted(registry)}")
    return registry[kind].from_config(dict(config.get("config") or {}))
