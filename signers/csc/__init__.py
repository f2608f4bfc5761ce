"""Remote signing over the Cloud Signature Consortium API (VNPT SmartCA, Viettel MySign shape)."""

from hub import hookimpl


@hookimpl
def hocba_hub_signer_types(register):
    from signers.csc.signer import CscSigner

    register(CscSigner)
