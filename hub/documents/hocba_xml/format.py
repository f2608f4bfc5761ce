"""The XML học bạ in the layout the sector's signing tools recognise (see DESIGN.md).

The Ministry's XSD is not public. The element names the sector's tools look for are these::

    HOC_BA
      DU_LIEU_HOC_BA Id="data"                  the principal and the school sign #data
        THONG_TIN_HOC_BA Id="thongtinhocba"     student, school, year, summary: the homeroom teacher
        DIEM_TONG_KET Id="mon-<code>"…          one per subject, naming its teacher in GVBM Ref="gvbm-<code>"
        DANH_SACH_THONG_TIN_KY                  the teachers' signature slots (inside #data: later
          DANH_SACH_GVBM/GVBM Id="gvbm-<code>"  signatures seal earlier ones, as in the PDF)
          GVCN
      PHAT_HANH_HOC_BA
        CBQL                                    the principal (cán bộ quản lý) → #data
        KY_PHAT_HANH                            the school's issuing signature → #data

Inside ``THONG_TIN_HOC_BA`` and the subjects the names are ours: the catalogue's names in capitals
where it has them (``MAHOCSINH``, ``DTBCN``…). ``hocba.xsd`` beside this module describes exactly
what ``build`` writes; every document it writes validates against it.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

from hub.contracts import DocumentFormat, SignatureSlot, SigningIdentity
from hub.documents.xmlsafe import XmlElement, parse
from hub.documents.xmlsafe import schema_errors as xml_schema_errors
from hub.records import PrimaryTranscript, SecondaryTranscript

__all__ = ["HocbaXml", "SCHEMA_FILE", "subject_id", "slot_id"]

SCHEMA_FILE = Path(__file__).with_name("hocba.xsd")
DATA_ID = "data"
INFO_ID = "thongtinhocba"


def _token(code: str) -> str:
    # An xs:ID is an NCName: subject codes are short letters and digits, anything else becomes "_".
    return re.sub(r"[^A-Za-z0-9_.-]", "_", code) or "_"


def subject_id(code: str) -> str:
    """The ``Id`` of a subject's ``DIEM_TONG_KET``."""
    return f"mon-{_token(code)}"


def slot_id(code: str) -> str:
    """The ``Id`` of a subject teacher's ``GVBM`` slot."""
    return f"gvbm-{_token(code)}"


def _text(parent: XmlElement, tag: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif hasattr(value, "isoformat"):
        value = value.isoformat()
    elif hasattr(value, "value"):  # enums
        value = value.value
    etree.SubElement(parent, tag).text = str(value)


def _person(parent: XmlElement, tag: str, name: str | None, personal_id: str | None,
            **extra: Any) -> XmlElement:
    el = etree.SubElement(parent, tag)
    _text(el, "HOTEN", name)
    _text(el, "SODINHDANH", personal_id)
    for key, value in extra.items():
        _text(el, key, value)
    return el


class HocbaXml(DocumentFormat):
    """The built-in XML học bạ: ``HOC_BA`` with a ``ds:Signature`` slot per signing role."""

    name = "xml"

    def build(self, record: PrimaryTranscript | SecondaryTranscript) -> bytes:
        root = etree.Element("HOC_BA", PhienBan="1.0")
        data = etree.SubElement(root, "DU_LIEU_HOC_BA", Id=DATA_ID)
        info = etree.SubElement(data, "THONG_TIN_HOC_BA", Id=INFO_ID)
        for tag, value in (("IDBANGHI", record.record_id), ("PHIENBAN", record.version),
                           ("THOIGIANCAPNHAT", record.updated_at.isoformat(timespec="seconds")),
                           ("MADINHDANHHOCBA", record.transcript_id), ("TRANGTHAI", record.status),
                           ("MASOGD", record.department_code), ("MATRUONG", record.school_code),
                           ("TENTRUONG", record.school_name), ("MACAPHOC", record.level),
                           ("MAKHOI", record.grade), ("TENLOP", record.class_name),
                           ("NAMHOC", record.school_year)):
            _text(info, tag, value)
        s = record.student
        student = etree.SubElement(info, "HOC_SINH")
        for tag, value in (("MAHOCSINH", s.student_code), ("SODINHDANHCANHAN", s.personal_id),
                           ("HOVATEN", s.full_name), ("NGAYSINH", s.birth_date), ("GIOITINH", int(s.gender)),
                           ("DANTOC", s.ethnicity), ("QUOCTICH", s.nationality), ("HOTENCHA", s.father_name),
                           ("HOTENME", s.mother_name), ("HOTENNGUOIGIAMHO", s.guardian_name),
                           ("DOITUONGCHINHSACH", s.policy_group),
                           ("COKHUYETTATKHONGDANHGIA", s.disability_not_assessed)):
            _text(student, tag, value)
        results = etree.SubElement(info, "KET_QUA")
        if isinstance(record, PrimaryTranscript):
            primary = etree.SubElement(results, "TIEU_HOC")
            for group, values in (("PHAM_CHAT", record.qualities), ("NANG_LUC", record.competencies)):
                el = etree.SubElement(primary, group)
                for code in sorted(values):
                    etree.SubElement(el, "MUC", Ma=code).text = values[code].value
            _text(primary, "HOANTHANHCTLH", record.completed_grade_program)
            _text(primary, "HOANTHANHCTTH", record.completed_primary_program)
            _text(primary, "DUOCLENLOP", record.promoted)
            awards = etree.SubElement(primary, "KHEN_THUONG")
            for award in record.awards:
                _text(awards, "NOIDUNG", award)
        else:
            secondary = etree.SubElement(results, "TRUNG_HOC")
            for group, levels in (("KETQUAHOCTAP", record.learning), ("KETQUARENLUYEN", record.conduct)):
                el = etree.SubElement(secondary, group)
                _text(el, "HOCKY1", levels.term1)
                _text(el, "HOCKY2", levels.term2)
                _text(el, "CANAM", levels.year)
            _text(secondary, "SONGAYNGHI", record.days_absent)
            _text(secondary, "DUOCLENLOP", record.promoted)
            certificates = etree.SubElement(secondary, "CHUNG_CHI")
            for c in record.certificates:
                el = etree.SubElement(certificates, "MUC")
                _text(el, "TENCHUNGCHI", c.name)
                _text(el, "NGAYCAP", c.issued_on)
                _text(el, "NOICAP", c.issuer)
        sig = record.signatories
        approval = etree.SubElement(info, "KY_DUYET")
        _person(approval, "GVCN", sig.homeroom_teacher_name, sig.homeroom_teacher_personal_id)
        _person(approval, "HIEU_TRUONG", sig.principal_name, sig.principal_personal_id,
                CHUCVU=sig.principal_title)
        _text(approval, "NGAYKY", sig.issue_date)
        _text(approval, "DIADANH", sig.issue_place)

        seen: set[str] = set()
        codes = []
        for subject in record.subjects:
            code = _token(subject.subject_code)
            if code in seen:  # two subjects whose codes clean to one token: number them apart
                code = f"{code}.{len(seen)}"
            seen.add(code)
            codes.append(code)
            el = etree.SubElement(data, "DIEM_TONG_KET", Id=f"mon-{code}")
            _text(el, "MAMONHOC", subject.subject_code)
            _text(el, "TENMONHOC", subject.subject_name)
            if isinstance(record, PrimaryTranscript):
                for tag, value in (("MUCDATHK1", subject.term1_level), ("MUCDATCN", subject.year_level),
                                   ("DIEMKTDKHK1", subject.term1_score), ("DIEMKTDKCN", subject.year_score),
                                   ("NHANXET", subject.comment)):
                    _text(el, tag, value)
            else:
                for tag, value in (("DTBHK1", subject.term1_average), ("DTBHK2", subject.term2_average),
                                   ("DTBCN", subject.year_average), ("KETQUAHK1", subject.term1_comment),
                                   ("KETQUAHK2", subject.term2_comment), ("KETQUACN", subject.year_comment)):
                    _text(el, tag, value)
                teacher = _person(el, "GVBM", subject.teacher_name, subject.teacher_personal_id)
                teacher.set("Ref", f"gvbm-{code}")
        slots = etree.SubElement(data, "DANH_SACH_THONG_TIN_KY")
        if isinstance(record, SecondaryTranscript):
            teachers = etree.SubElement(slots, "DANH_SACH_GVBM")
            for code in codes:
                etree.SubElement(teachers, "GVBM", Id=f"gvbm-{code}")
        etree.SubElement(slots, "GVCN")
        issue = etree.SubElement(root, "PHAT_HANH_HOC_BA")
        etree.SubElement(issue, "CBQL")
        etree.SubElement(issue, "KY_PHAT_HANH")
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    def slots(self, document: bytes) -> list[SignatureSlot]:
        root = parse(document).getroot()
        school_code = root.findtext("DU_LIEU_HOC_BA/THONG_TIN_HOC_BA/MATRUONG") or ""
        school_name = root.findtext("DU_LIEU_HOC_BA/THONG_TIN_HOC_BA/TENTRUONG") or ""
        approval = "DU_LIEU_HOC_BA/THONG_TIN_HOC_BA/KY_DUYET"
        out = []
        # Each subject names its teacher's slot (GVBM/@Ref); the first subject naming a slot owns it.
        subject_of: dict[str, Any] = {}
        for subject in root.iterfind("DU_LIEU_HOC_BA/DIEM_TONG_KET"):
            teacher = subject.find("GVBM")
            if teacher is not None:
                subject_of.setdefault(teacher.get("Ref"), subject)
        for slot in root.iterfind("DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/DANH_SACH_GVBM/GVBM"):
            sid = slot.get("Id", "")
            subject = subject_of.get(sid)
            teacher = subject.find("GVBM") if subject is not None else None
            name = teacher.findtext("HOTEN") if teacher is not None else None
            pid = teacher.findtext("SODINHDANH") if teacher is not None else None
            code = subject.findtext("MAMONHOC") if subject is not None else sid
            out.append(SignatureSlot(
                role="subject_teacher", name=f"DANH_SACH_GVBM/GVBM[@Id='{sid}']",
                path=f"DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/DANH_SACH_GVBM/GVBM[@Id='{sid}']",
                reference=subject.get("Id", "") if subject is not None else "",
                signature_id=f"sig-{sid}",
                identity=SigningIdentity("subject_teacher", name or f"(no teacher named for {code})",
                                         school_code, pid or None),
                subject=code or "",
            ))
        out.append(SignatureSlot(
            role="homeroom_teacher", name="GVCN", path="DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/GVCN",
            reference=INFO_ID, signature_id="sig-gvcn",
            identity=SigningIdentity("homeroom_teacher", root.findtext(f"{approval}/GVCN/HOTEN") or "",
                                     school_code, root.findtext(f"{approval}/GVCN/SODINHDANH") or None)))
        out.append(SignatureSlot(
            role="principal", name="CBQL", path="PHAT_HANH_HOC_BA/CBQL", reference=DATA_ID,
            signature_id="sig-cbql",
            identity=SigningIdentity("principal", root.findtext(f"{approval}/HIEU_TRUONG/HOTEN") or "",
                                     school_code, root.findtext(f"{approval}/HIEU_TRUONG/SODINHDANH") or None)))
        out.append(SignatureSlot(
            role="school_seal", name="KY_PHAT_HANH", path="PHAT_HANH_HOC_BA/KY_PHAT_HANH", reference=DATA_ID,
            signature_id="sig-phathanh", identity=SigningIdentity("school_seal", school_name, school_code)))
        return out

    def schema_errors(self, document: bytes) -> list[str]:
        return xml_schema_errors(_schema(), document)

    def data_of(self, document: bytes) -> dict[str, Any]:
        info = parse(document).getroot().find("DU_LIEU_HOC_BA/THONG_TIN_HOC_BA")
        if info is None:
            return {}
        return {"school_code": info.findtext("MATRUONG"), "transcript_id": info.findtext("MADINHDANHHOCBA"),
                "record_id": info.findtext("IDBANGHI"), "version": info.findtext("PHIENBAN"),
                "updated_at": info.findtext("THOIGIANCAPNHAT"), "school_name": info.findtext("TENTRUONG"),
                "school_year": info.findtext("NAMHOC"), "class_name": info.findtext("TENLOP"),
                "department_code": info.findtext("MASOGD")}


@cache
def _schema() -> etree.XMLSchema:
    # The schema ships with the package; parsed once per process, never fetched.
    return etree.XMLSchema(parse(SCHEMA_FILE.read_bytes()))
