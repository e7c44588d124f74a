def test_smoke(serve_node, make_client):
    node = serve_node("tests.services")
    client = make_client()
    assert client.HelloService.Hello("x") == "hello:x"
    assert client.nodes("HelloService") == [node.address]
