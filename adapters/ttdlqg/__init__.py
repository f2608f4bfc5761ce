"""The National Data Centre sync, Trung tâm dữ liệu quốc gia (destination): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.ttdlqg.adapter import TtdlqgAdapter

    register(TtdlqgAdapter)
