"""Who signs a transcript in which role, and the request a signer receives.

The PAdES signature itself lives in ``hub.documents.pades``; keys held on this machine in
``hub.documents.local_keys``. Remote and hardware signers implement ``hub.contracts.Signer``
and call ``pades.sign_elsewhere`` with their own pyHanko signer.
"""

from __future__ import annotations

import datetime as dt

from hub.contracts import (
    SIGNING_ROLES,
    PluginError,
    SigningIdentity,
    SignRequest,
)
from hub.documents.render import ROLE_LABELS
from hub.records import PrimaryTranscript, SecondaryTranscript


class SigningError(PluginError):
    """One request cannot be signed (unknown identity, expired certificate, missing field).

    The signer itself still works: other records go on; this one waits for a fix.
    """


def refuse_outside_validity(who: str, not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime,
                            *, held: str = "") -> None:
    """``SigningError`` unless ``now`` lies within a certificate's validity; every signer words it
    alike, naming where the key is ``held`` (``on the token``) when that helps the operator."""
    where = f"{who} {held}" if held else who
    if now < not_before:
        raise SigningError(f"certificate of {where} is not valid until {not_before:%Y-%m-%d %H:%M} UTC; not signing")
    if now > not_after:
        raise SigningError(f"certificate of {where} expired on {not_after:%Y-%m-%d %H:%M} UTC; renew it before signing")


# --- who signs ------------------------------------------------------------------------------------

def identity_for(record: PrimaryTranscript | SecondaryTranscript, role: str) -> SigningIdentity:
    """The identity that signs ``record`` in ``role`` (``hub.contracts.SIGNING_ROLES``).

    Raises ``SigningError`` when a person's personal id is missing: ``SigningIdentity.key``
    would fall back to the school code and pick the school seal's key to sign as that person.
    """
    s = record.signatories
    if role == "school_seal":
        return SigningIdentity(role, record.school_name, record.school_code)
    people = {
        "homeroom_teacher": (s.homeroom_teacher_name, s.homeroom_teacher_personal_id),
        "principal": (s.principal_name, s.principal_personal_id),
    }
    if role not in people:
        raise ValueError(f"unknown signing role {role!r}; expected one of {', '.join(SIGNING_ROLES)}")
    name, personal_id = people[role]
    if not personal_id:
        raise SigningError(f"signatories.{role}_personal_id: missing, so no key can be chosen "
                           f"for {role} {name}")
    return SigningIdentity(role, name, record.school_code, personal_id)


def request_for(record: PrimaryTranscript | SecondaryTranscript, pdf: bytes, role: str, *,
                level: str = "B-B", timestamp_url: str = "") -> SignRequest:
    """A request to sign ``role``'s field of the rendered ``pdf`` of ``record`` at PAdES ``level``."""
    return SignRequest(
        pdf=pdf,
        field_name=role,
        identity=identity_for(record, role),
        reason=f"{ROLE_LABELS[role]} ký học bạ {record.transcript_id}",
        location=record.signatories.issue_place,
        level=level,
        timestamp_url=timestamp_url,
    )


# --- the PAdES signature --------------------------------------------------------------------------

# A stamp shows a name, a role and a time: ASCII, Latin-1 and the Vietnamese letters. pyHanko
# parses and subsets the stamp font for every signature, so the smaller it is the better
# (≈300 glyphs instead of the page font's 1300: a fifth of the signing time saved).


# --- before signing: is the signer's certificate still good? ---------------------------------------

async def certificate_problem(chain: list[bytes] | tuple[bytes, ...], trust: tuple[bytes, ...] = ()) -> tuple[str, bool]:
    """Why the certificate ``chain[0]`` (DER, then its issuers) must not sign now: expired,
    not yet valid, or revoked according to its CA (the OCSP responder or CRL the certificate
    names, fetched now: pyhanko-certvalidator, revocation ``hard-fail``). ``("", True)`` when
    it may sign; the flag says whether the answer may be cached (an unreachable CA's is not).

    A chain that cannot be completed to a root here is not this check's business (the hub's
    final check binds every signature to the trust anchors): only revocation and validity are.
    """
    from asn1crypto import x509 as asn1_x509
    from pyhanko_certvalidator import CertificateValidator, ValidationContext
    from pyhanko_certvalidator.errors import (
        ExpiredError,
        InsufficientRevinfoError,
        NotYetValidError,
        PathBuildingError,
        RevokedError,
    )

    certs = [asn1_x509.Certificate.load(c) for c in chain]
    roots = [asn1_x509.Certificate.load(r) for r in trust] + [c for c in certs if c.self_signed != "no"]
    context = ValidationContext(trust_roots=roots, other_certs=certs[1:], allow_fetching=True,
                                revocation_mode="hard-fail")
    who = certs[0].subject.native.get("common_name", certs[0].subject.human_friendly)
    serial = format(certs[0].serial_number, "x")
    try:
        await CertificateValidator(certs[0], validation_context=context).async_validate_usage(set())
    except RevokedError as exc:
        return f"the certificate of {who} (serial {serial}) is revoked: {exc}", True
    except (ExpiredError, NotYetValidError) as exc:
        return f"the certificate of {who} (serial {serial}) is not valid now: {exc}", True
    except InsufficientRevinfoError as exc:
        return (f"the revocation status of the certificate of {who} (serial {serial}) cannot be "
                f"checked (its CA's OCSP responder or CRL did not answer): {exc}"), False
    except PathBuildingError:
        return "", False
    except Exception as exc:  # any other refusal of the path: not revocation, the final check decides
        if "revoked" in str(exc).lower():
            return f"the certificate of {who} (serial {serial}) is revoked: {exc}", True
        return "", False
    finally:
        closing = getattr(context, "aclose", None)
        if closing is not None:
            await closing()
    return "", True


def certificate_problem_blocking(chain: tuple[bytes, ...], trust: tuple[bytes, ...] = ()) -> tuple[str, bool]:
    """``certificate_problem`` for a worker process (no running loop): path building and the
    CA's answers are CPU the coordinating process should not spend."""
    import asyncio

    return asyncio.run(certificate_problem(chain, trust))
