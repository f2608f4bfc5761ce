"""The national population database through the province's data-sharing gateway: see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_identity_provider_types(register):
    from adapters.dancu.adapter import DancuProvider

    register(DancuProvider)
