from metalflow.lab.cli import app

app(prog_name="python -m metalflow.lab")
