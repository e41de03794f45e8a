"""The account as an Excel workbook: the same figures as the page, as numbers, not text."""

from __future__ import annotations

from io import BytesIO

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from grassroots.irrigation.accounting.queries import AccountReport
from grassroots.kernel.i18n import translate

M3_FORMAT = "#,##0"
COEFFICIENT_FORMAT = "0.000"
HEADER_FILL = PatternFill("solid", fgColor="DDE6F0")
BOLD = Font(bold=True)
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _title(sheet: Worksheet, text: str, subtitle: str, width: int) -> None:
    sheet.append([text])
    sheet.append([subtitle])
    sheet["A1"].font = Font(bold=True, size=14)
    if width > 1:
        sheet.merge_cells(start_row=1, start_column=1, end_row=1, end_column=width)
        sheet.merge_cells(start_row=2, start_column=1, end_row=2, end_column=width)
    sheet.append([])


def _header(sheet: Worksheet, values: list[str]) -> None:
    sheet.append(values)
    for cell in sheet[sheet.max_row]:
        cell.font = BOLD
        cell.fill = HEADER_FILL
        cell.alignment = Alignment(horizontal="center", vertical="center", wrap_text=True)


def _widths(sheet: Worksheet, first: int, rest: int, columns: int) -> None:
    sheet.column_dimensions["A"].width = first
    for index in range(2, columns + 1):
        sheet.column_dimensions[get_column_letter(index)].width = rest


def account_workbook(report: AccountReport, language: str = "zh_CN") -> bytes:
    """Three sheets: the account table, the use summary and the canal coefficients."""
    def _(key: str, **params: object) -> str:
        return translate(key, language, **params)

    t = report.table
    span = _("irrigation.account.range", start=t.first.isoformat(), end=t.last.isoformat())
    workbook = Workbook()

    sheet = workbook.active
    assert sheet is not None
    sheet.title = _("irrigation.xlsx.sheet_account")
    measure = _(f"irrigation.measure.{t.measure.value}")
    grouping = _(f"irrigation.grouping.{t.grouping.value}")
    width = len(t.groups) + 2
    _title(sheet, _("irrigation.account.title"),
           f"{span} · {grouping} · {measure} · {_('irrigation.unit.m3')}", width)
    _header(sheet, [_("irrigation.account.period")] + [g.label for g in t.groups]
            + [_("irrigation.account.total")])
    for bucket, label in t.periods:
        sheet.append([label] + [t.cell(bucket.key, g.key) for g in t.groups]
                     + [t.row_total(bucket.key)])
    sheet.append([_("irrigation.account.total")] + [t.column_total(g.key) for g in t.groups]
                 + [t.total])
    for cell in sheet[sheet.max_row]:
        cell.font = BOLD
    for row in sheet.iter_rows(min_row=5, min_col=2):
        for cell in row:
            cell.number_format = M3_FORMAT
    sheet.freeze_panes = "B5"
    _widths(sheet, 18, 14, width)

    uses = workbook.create_sheet(_("irrigation.xlsx.sheet_uses"))
    _title(uses, _("irrigation.account.uses_title"), span, 4)
    _header(uses, [_("irrigation.account.use"), _("irrigation.measure.source"),
                   _("irrigation.measure.delivered"), _("irrigation.account.coefficient")])
    for u in report.uses:
        uses.append([u.label, u.source_m3, u.delivered_m3, u.coefficient])
    uses.append([_("irrigation.account.district"), report.lifted_m3, report.delivered_m3,
                 report.district_coefficient])
    for cell in uses[uses.max_row]:
        cell.font = BOLD
    for row in uses.iter_rows(min_row=5, min_col=2, max_col=3):
        for cell in row:
            cell.number_format = M3_FORMAT
    for row in uses.iter_rows(min_row=5, min_col=4, max_col=4):
        for cell in row:
            cell.number_format = COEFFICIENT_FORMAT
    _widths(uses, 18, 20, 4)

    canals = workbook.create_sheet(_("irrigation.xlsx.sheet_canals"))
    _title(canals, _("irrigation.account.canals_title"), span, 6)
    _header(canals, [_("irrigation.account.canal"), _("irrigation.account.level"),
                     _("irrigation.account.inflow"), _("irrigation.account.outflow"),
                     _("irrigation.account.loss"), _("irrigation.account.coefficient")])
    for b in report.balances:
        canals.append([b.name, _(f"irrigation.level.{b.level.value}"), b.inflow_m3,
                       b.outflow_m3, b.loss_m3, b.coefficient])
    for row in canals.iter_rows(min_row=5, min_col=3, max_col=5):
        for cell in row:
            cell.number_format = M3_FORMAT
    for row in canals.iter_rows(min_row=5, min_col=6, max_col=6):
        for cell in row:
            cell.number_format = COEFFICIENT_FORMAT
    _widths(canals, 16, 16, 6)

    buffer = BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
