"""School software that pushes transcripts to the hub (signed webhooks): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.push.adapter import PushAdapter

    register(PushAdapter)
