import httpx

from agentkit_standin.standin import StandIn


def test_it_keeps_and_lists_the_alerts_it_receives():
    standin = StandIn(opscore_url="http://127.0.0.1:9").start()
    try:
        answer = httpx.post(standin.url + "/_standin/alerts", json={"title": "[Ops-Core] x"},
                            headers={"X-Opscore-Signature": "abc"})
        assert answer.status_code == 200
        assert httpx.post(standin.url + "/_standin/alerts", content=b"{no").status_code == 400
        assert httpx.get(standin.url + "/_standin/alerts").json() == {
            "alerts": [{"body": {"title": "[Ops-Core] x"}, "signature": "abc"}]}
    finally:
        standin.stop()
