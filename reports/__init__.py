"""Word (python-docx) and Excel (openpyxl) documents generated from MedLoop data."""
