from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def index(request):
    return render(request, "ota/index.html")


@login_required
def widget(request):
    return render(request, "ota/widget.html")
