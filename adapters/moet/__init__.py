"""The central transcript store (destination): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.moet.adapter import MoetAdapter

    register(MoetAdapter)
