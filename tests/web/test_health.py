from fastapi.testclient import TestClient


def test_healthz_reports_the_database_as_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_an_unknown_api_path_gets_a_json_error_in_the_requested_language(
    client: TestClient,
) -> None:
    english = client.get("/api/v1/no-such-thing", headers={"Accept-Language": "en"})
    chinese = client.get("/api/v1/no-such-thing")
    assert english.status_code == 404
    assert english.json()["error"] == {"code": "not_found", "message": "Page not found"}
    assert chinese.json()["error"]["message"] == "页面不存在"


def test_an_unknown_page_gets_an_html_error_page(client: TestClient) -> None:
    response = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "页面不存在" in response.text
